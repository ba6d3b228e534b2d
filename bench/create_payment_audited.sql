-- pgbench script: bench/create_payment.sql plus the audit row that ctrip writes with every
-- create, in one statement as src/payments/store.rs does. The audit trigger locks the one
-- chain head row until COMMIT, so concurrent creates queue for it.
\set amount random(1, 1000000000)
BEGIN;
SELECT key_id, merchant_id FROM ctrip.begin_request(:prefix, decode(:key_hash, 'hex')) \gset
SELECT nextval('ctrip.deposit_index_evm')::integer AS derivation_index \gset
WITH address AS (
    INSERT INTO ctrip.deposit_addresses
        (merchant_id, family, derivation_index, derivation_path, address)
    VALUES (:merchant_id::uuid, 'evm', :derivation_index::integer,
            'm/44''/60''/0''/0/' || :derivation_index::text,
            '0x' || lpad(to_hex(:derivation_index::integer), 40, '0'))
    RETURNING id, address
), payment AS (
    INSERT INTO ctrip.payments
        (id, merchant_id, chain, token, deposit_address_id, amount, expires_at)
    SELECT gen_random_uuid(), :merchant_id::uuid, 'ethereum', NULL, address.id,
           :amount::numeric, now() + interval '1800 seconds'
    FROM address
    RETURNING id
)
INSERT INTO ctrip.audit_events
    (actor_type, actor_id, merchant_id, action, object_type, object_id, outcome,
     source_address, request_id, details)
SELECT 'api_key', :key_id::text, :merchant_id::uuid, 'payment.created', 'payment',
       payment.id::text, 'success', '127.0.0.1', gen_random_uuid()::text,
       jsonb_build_object('chain', 'ethereum', 'token', NULL::text,
                          'amount', :amount::text, 'address', address.address)
FROM payment, address;
COMMIT;
