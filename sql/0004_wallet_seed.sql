-- A fingerprint of the seed the deposit addresses are derived from.
--
-- Without it, a ctrip process started with another mnemonic or passphrase would hand out
-- addresses nobody can spend from. The first process to start records the fingerprint; every
-- later start compares it and refuses on a mismatch. The fingerprint is a hash of public
-- addresses, so it reveals nothing about the keys.

CREATE TABLE ctrip.wallet_seed (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    fingerprint text NOT NULL CHECK (fingerprint ~ '^[0-9a-f]{32}$'),
    created_at  timestamptz NOT NULL DEFAULT now()
);

GRANT SELECT, INSERT ON ctrip.wallet_seed TO ctrip_app;
