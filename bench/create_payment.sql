-- pgbench script: the database work of one EVM payment create, without ctrip.
-- Run by scripts/bench.sh as ctrip_runtime with -M prepared and -D prefix=... -D key_hash=...
-- (the bench API key's prefix and the hex SHA-256 of the whole key).
--
-- Row-level security admits the runtime login's rows only for the merchant that
-- ctrip.begin_request records, so the script opens that context first, as ctrip does.
-- The derivation index comes from the same sequence ctrip uses, which keeps
-- (family, derivation_index) and the address unique. The address is the index in hex
-- because pgbench cannot derive one; ctrip derives it in memory.
\set amount random(1, 1000000000)
BEGIN;
SELECT merchant_id FROM ctrip.begin_request(:prefix, decode(:key_hash, 'hex')) \gset
SELECT nextval('ctrip.deposit_index_evm')::integer AS derivation_index \gset
INSERT INTO ctrip.deposit_addresses
    (merchant_id, family, derivation_index, derivation_path, address)
VALUES (:merchant_id::uuid, 'evm', :derivation_index::integer,
        'm/44''/60''/0''/0/' || :derivation_index::text,
        '0x' || lpad(to_hex(:derivation_index::integer), 40, '0'))
RETURNING id AS address_id \gset
INSERT INTO ctrip.payments
    (id, merchant_id, chain, token, deposit_address_id, amount, expires_at)
VALUES (gen_random_uuid(), :merchant_id::uuid, 'ethereum', NULL, :address_id::bigint,
        :amount::numeric, now() + interval '1800 seconds');
COMMIT;
