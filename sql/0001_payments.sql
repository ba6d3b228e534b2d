-- Chains, tokens, deposit addresses, payments and API keys.
--
-- Runs as the schema owner (the migration login after SET ROLE ctrip_owner). The runtime
-- login reaches these tables only through the group role ctrip_app, which gets the
-- privileges the server needs and nothing more.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ctrip_app') THEN
        RAISE EXCEPTION 'role ctrip_app does not exist'
            USING HINT = 'create it first: CREATE ROLE ctrip_app NOLOGIN; then GRANT ctrip_app TO the runtime login';
    END IF;
END
$$;

-- Synced from config.toml at start-up.
CREATE TABLE ctrip.chains (
    name       text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_-]{0,31}$'),
    family     text NOT NULL CHECK (family IN ('evm', 'solana')),
    symbol     text NOT NULL CHECK (symbol ~ '^[A-Za-z0-9.]{1,16}$'),
    decimals   smallint NOT NULL CHECK (decimals BETWEEN 0 AND 77),
    enabled    boolean NOT NULL DEFAULT true,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ctrip.tokens (
    chain      text NOT NULL REFERENCES ctrip.chains (name),
    symbol     text NOT NULL CHECK (symbol ~ '^[A-Za-z0-9.]{1,16}$'),
    address    text NOT NULL,
    decimals   smallint NOT NULL CHECK (decimals BETWEEN 0 AND 77),
    enabled    boolean NOT NULL DEFAULT true,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chain, symbol),
    UNIQUE (chain, address)
);

-- One index space per key family; nextval never hands the same value out twice, even to
-- concurrent transactions in different processes. A rolled-back payment leaves a gap, which
-- only means one address is never used.
CREATE SEQUENCE ctrip.deposit_index_evm AS integer MINVALUE 0 MAXVALUE 2147483647 START 0 NO CYCLE;
CREATE SEQUENCE ctrip.deposit_index_solana AS integer MINVALUE 0 MAXVALUE 2147483647 START 0 NO CYCLE;

CREATE TABLE ctrip.deposit_addresses (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    family           text NOT NULL CHECK (family IN ('evm', 'solana')),
    derivation_index integer NOT NULL CHECK (derivation_index >= 0),
    derivation_path  text NOT NULL,
    address          text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (family, derivation_index),
    UNIQUE (address)
);

CREATE TABLE ctrip.payments (
    id                 uuid PRIMARY KEY,
    chain              text NOT NULL REFERENCES ctrip.chains (name),
    token              text,
    deposit_address_id bigint NOT NULL UNIQUE REFERENCES ctrip.deposit_addresses (id),
    -- Base units; the CHECK keeps amounts inside the uint256 range.
    amount             numeric(78, 0) NOT NULL CHECK (
        amount > 0
        AND amount <= 115792089237316195423570985008687907853269984665640564039457584007913129639935
    ),
    status             text NOT NULL DEFAULT 'pending' CHECK (
        status IN ('pending', 'detected', 'confirmed', 'paid', 'expired', 'failed', 'settled')
    ),
    confirmations      integer NOT NULL DEFAULT 0 CHECK (confirmations >= 0),
    expires_at         timestamptz NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    reference          text CHECK (char_length(reference) BETWEEN 1 AND 255),
    metadata           jsonb NOT NULL DEFAULT '{}' CHECK (
        jsonb_typeof(metadata) = 'object' AND pg_column_size(metadata) <= 16384
    ),
    FOREIGN KEY (chain, token) REFERENCES ctrip.tokens (chain, symbol),
    CHECK (expires_at > created_at)
);

-- Listing is newest first with a (created_at, id) cursor, optionally by status.
CREATE INDEX payments_created_idx ON ctrip.payments (created_at DESC, id DESC);
CREATE INDEX payments_status_created_idx ON ctrip.payments (status, created_at DESC, id DESC);

CREATE TABLE ctrip.api_keys (
    id           uuid PRIMARY KEY,
    name         text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    -- The public part of the key, safe to log: "ctrip_" and 8 base58 characters.
    prefix       text NOT NULL UNIQUE,
    -- SHA-256 of the whole key; the key itself is never stored.
    key_hash     bytea NOT NULL CHECK (octet_length(key_hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    last_used_at timestamptz
);

REVOKE ALL ON ALL TABLES IN SCHEMA ctrip FROM PUBLIC;
REVOKE ALL ON SCHEMA ctrip FROM PUBLIC;
GRANT USAGE ON SCHEMA ctrip TO ctrip_app;
GRANT SELECT ON ctrip.schema_migrations, ctrip.chains, ctrip.tokens TO ctrip_app;
GRANT SELECT, INSERT ON ctrip.deposit_addresses TO ctrip_app;
GRANT SELECT, INSERT ON ctrip.payments TO ctrip_app;
GRANT UPDATE (status, confirmations, updated_at) ON ctrip.payments TO ctrip_app;
GRANT SELECT ON ctrip.api_keys TO ctrip_app;
GRANT UPDATE (last_used_at) ON ctrip.api_keys TO ctrip_app;
GRANT USAGE ON SEQUENCE ctrip.deposit_index_evm, ctrip.deposit_index_solana TO ctrip_app;
