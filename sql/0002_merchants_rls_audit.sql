-- Merchants, row-level security, scoped API keys and the tamper-evident audit log.
--
-- Runs as ctrip_owner. Every merchant-owned table gets ROW LEVEL SECURITY, enabled and forced,
-- with policies on ctrip.current_merchant(). That function returns a merchant only when the
-- transaction-local setting ctrip.merchant_id matches the context that ctrip.begin_request()
-- recorded after checking an API key, so an unset, empty or forged setting matches no row.

-- Group roles, created here when the migration login may create roles; otherwise an
-- operator creates them beforehand (README, "Database roles").
DO $$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['ctrip_owner', 'ctrip_app', 'ctrip_readonly'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
            EXCEPTION
                WHEN duplicate_object OR unique_violation THEN NULL;
                WHEN insufficient_privilege THEN
                    RAISE EXCEPTION 'role % does not exist and this login may not create it', role_name
                        USING HINT = format('as a superuser run: CREATE ROLE %I NOLOGIN', role_name);
            END;
        END IF;
    END LOOP;
END
$$;

-- PUBLIC gets nothing on this database or its schemas, including CREATE on public, which
-- servers before PostgreSQL 15 grant by default.
DO $$
BEGIN
    -- REVOKE by a non-owner only warns, so check ownership first.
    IF (SELECT datdba FROM pg_catalog.pg_database WHERE datname = current_database())
        IS DISTINCT FROM 'ctrip_owner'::regrole THEN
        RAISE EXCEPTION 'database % is not owned by ctrip_owner', current_database()
            USING HINT = format('as a superuser run: ALTER DATABASE %I OWNER TO ctrip_owner',
                                current_database());
    END IF;
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO ctrip_app, ctrip_readonly', current_database());
END
$$;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
REVOKE ALL ON SCHEMA ctrip FROM PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE ctrip_owner REVOKE ALL ON TABLES FROM PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE ctrip_owner REVOKE ALL ON SEQUENCES FROM PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE ctrip_owner REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA ctrip FROM PUBLIC;

-- Merchants own payments, deposit addresses and API keys. Rows that existed before this
-- migration go to a merchant named "default".
CREATE TABLE ctrip.merchants (
    id         uuid PRIMARY KEY,
    name       text NOT NULL UNIQUE CHECK (char_length(name) BETWEEN 1 AND 100),
    created_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO ctrip.merchants (id, name)
SELECT '00000000-0000-0000-0000-000000000001', 'default'
WHERE EXISTS (SELECT FROM ctrip.api_keys) OR EXISTS (SELECT FROM ctrip.payments);

ALTER TABLE ctrip.api_keys ADD COLUMN merchant_id uuid REFERENCES ctrip.merchants (id);
ALTER TABLE ctrip.deposit_addresses ADD COLUMN merchant_id uuid REFERENCES ctrip.merchants (id);
ALTER TABLE ctrip.payments ADD COLUMN merchant_id uuid REFERENCES ctrip.merchants (id);
UPDATE ctrip.api_keys SET merchant_id = '00000000-0000-0000-0000-000000000001';
UPDATE ctrip.deposit_addresses SET merchant_id = '00000000-0000-0000-0000-000000000001';
UPDATE ctrip.payments SET merchant_id = '00000000-0000-0000-0000-000000000001';
ALTER TABLE ctrip.api_keys ALTER COLUMN merchant_id SET NOT NULL;
ALTER TABLE ctrip.deposit_addresses ALTER COLUMN merchant_id SET NOT NULL;
ALTER TABLE ctrip.payments ALTER COLUMN merchant_id SET NOT NULL;
CREATE INDEX api_keys_merchant_idx ON ctrip.api_keys (merchant_id);
DROP INDEX ctrip.payments_created_idx;
DROP INDEX ctrip.payments_status_created_idx;
CREATE INDEX payments_merchant_created_idx ON ctrip.payments (merchant_id, created_at DESC, id DESC);

-- Keys created before scopes existed keep full payment access.
ALTER TABLE ctrip.api_keys
    ADD COLUMN scopes text[] NOT NULL DEFAULT ARRAY['payments:read', 'payments:write'],
    ADD CONSTRAINT api_keys_scopes_known CHECK (
        scopes <@ ARRAY['payments:read', 'payments:write']
        AND cardinality(scopes) > 0
    );

-- The request context. begin_request() records the merchant of a verified, unrevoked key
-- in a temporary table owned by ctrip_owner, which the runtime role can neither read nor
-- write, and which empties itself at the end of every transaction.
CREATE FUNCTION ctrip.begin_request(p_prefix text, p_key_hash bytea)
RETURNS TABLE (key_id uuid, merchant_id uuid, scopes text[], revoked boolean, stale boolean)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    key record;
BEGIN
    SELECT k.id, k.merchant_id, k.scopes, k.revoked_at IS NOT NULL AS revoked, k.key_hash,
           (k.last_used_at IS NULL OR k.last_used_at < now() - interval '60 seconds') AS stale
    INTO key
    FROM ctrip.api_keys k
    WHERE k.prefix = p_prefix;
    -- Comparing hashes of the hashes makes the comparison's timing independent of how many
    -- bytes of the stored hash a guess matches, as a constant-time comparison would.
    IF NOT FOUND OR sha256(key.key_hash) IS DISTINCT FROM sha256(p_key_hash) THEN
        RETURN;
    END IF;
    IF NOT key.revoked THEN
        IF to_regclass('pg_temp.ctrip_request') IS NULL THEN
            CREATE TEMPORARY TABLE ctrip_request (
                merchant_id uuid NOT NULL,
                key_id      uuid NOT NULL
            ) ON COMMIT DELETE ROWS;
        END IF;
        IF EXISTS (SELECT FROM pg_temp.ctrip_request) THEN
            RAISE EXCEPTION 'the request context is already set in this transaction'
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        INSERT INTO pg_temp.ctrip_request VALUES (key.merchant_id, key.id);
        PERFORM set_config('ctrip.merchant_id', key.merchant_id::text, true);
    END IF;
    RETURN QUERY SELECT key.id, key.merchant_id, key.scopes, key.revoked, key.stale;
END
$$;

-- The merchant of this transaction, or NULL (matching no row) when the setting is unset,
-- empty, or differs from the context begin_request() recorded.
CREATE FUNCTION ctrip.current_merchant()
RETURNS uuid
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF to_regclass('pg_temp.ctrip_request') IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN (
        SELECT r.merchant_id FROM pg_temp.ctrip_request r
        WHERE r.merchant_id::text = current_setting('ctrip.merchant_id', true)
    );
END
$$;

-- The merchant that owns a payment, whatever the context: only used to tell a
-- cross-merchant attempt (audited) from a plain unknown id; the caller still answers 404.
CREATE FUNCTION ctrip.payment_merchant(p_id uuid)
RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT merchant_id FROM ctrip.payments WHERE id = p_id $$;

ALTER TABLE ctrip.merchants ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
ALTER TABLE ctrip.api_keys ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
ALTER TABLE ctrip.deposit_addresses ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
ALTER TABLE ctrip.payments ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;

-- The owner (migrations and the CLI) manages every merchant's rows.
CREATE POLICY owner_all ON ctrip.merchants TO ctrip_owner USING (true) WITH CHECK (true);
CREATE POLICY owner_all ON ctrip.api_keys TO ctrip_owner USING (true) WITH CHECK (true);
CREATE POLICY owner_all ON ctrip.deposit_addresses TO ctrip_owner USING (true) WITH CHECK (true);
CREATE POLICY owner_all ON ctrip.payments TO ctrip_owner USING (true) WITH CHECK (true);

-- The server sees and writes only the current merchant's rows. The sub-select makes the
-- function run once per statement instead of once per row.
CREATE POLICY app_own_merchant ON ctrip.merchants TO ctrip_app
    USING (id = (SELECT ctrip.current_merchant()));
CREATE POLICY app_own_merchant ON ctrip.api_keys TO ctrip_app
    USING (merchant_id = (SELECT ctrip.current_merchant()))
    WITH CHECK (merchant_id = (SELECT ctrip.current_merchant()));
CREATE POLICY app_own_merchant ON ctrip.deposit_addresses TO ctrip_app
    USING (merchant_id = (SELECT ctrip.current_merchant()))
    WITH CHECK (merchant_id = (SELECT ctrip.current_merchant()));
CREATE POLICY app_own_merchant ON ctrip.payments TO ctrip_app
    USING (merchant_id = (SELECT ctrip.current_merchant()))
    WITH CHECK (merchant_id = (SELECT ctrip.current_merchant()));

-- The audit log. Rows are chained: hash = SHA-256(prev_hash || encoding of the row's own
-- fields), where each field is a 4-byte big-endian length and its UTF-8 text, and NULL is the
-- length 0xFFFFFFFF with no bytes. The chain head is one locked row, so concurrent writers
-- queue for it and the chain cannot fork.
CREATE TABLE ctrip.audit_events (
    id             bigint PRIMARY KEY,
    occurred_at    timestamptz NOT NULL DEFAULT now(),
    actor_type     text NOT NULL CHECK (actor_type IN ('api_key', 'cli', 'system')),
    actor_id       text,
    merchant_id    uuid,
    action         text NOT NULL,
    object_type    text,
    object_id      text,
    outcome        text NOT NULL CHECK (outcome IN ('success', 'denied', 'failed')),
    source_address text,
    request_id     text,
    details        jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(details) = 'object'),
    prev_hash      bytea NOT NULL CHECK (octet_length(prev_hash) = 32),
    hash           bytea NOT NULL CHECK (octet_length(hash) = 32)
);
CREATE INDEX audit_events_occurred_idx ON ctrip.audit_events (occurred_at);

CREATE TABLE ctrip.audit_chain_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_id   bigint NOT NULL,
    last_hash bytea NOT NULL
);
INSERT INTO ctrip.audit_chain_head VALUES (true, 0, decode(repeat('00', 32), 'hex'));

CREATE FUNCTION ctrip.audit_field(value text)
RETURNS bytea
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog
AS $$
    SELECT CASE WHEN value IS NULL THEN '\xffffffff'::bytea
                ELSE int4send(octet_length(convert_to(value, 'UTF8'))) || convert_to(value, 'UTF8')
           END
$$;

-- The encoding the chain hashes; `ctrip audit verify` recomputes the same bytes in Rust.
CREATE FUNCTION ctrip.audit_encoding(e ctrip.audit_events)
RETURNS bytea
LANGUAGE sql STABLE
SET search_path = pg_catalog
AS $$
    SELECT ctrip.audit_field(e.id::text)
        || ctrip.audit_field(((extract(epoch FROM e.occurred_at) * 1000000)::bigint)::text)
        || ctrip.audit_field(e.actor_type)
        || ctrip.audit_field(e.actor_id)
        || ctrip.audit_field(e.merchant_id::text)
        || ctrip.audit_field(e.action)
        || ctrip.audit_field(e.object_type)
        || ctrip.audit_field(e.object_id)
        || ctrip.audit_field(e.outcome)
        || ctrip.audit_field(e.source_address)
        || ctrip.audit_field(e.request_id)
        || ctrip.audit_field(e.details::text)
$$;

CREATE FUNCTION ctrip.audit_chain()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    head record;
BEGIN
    SELECT last_id, last_hash INTO head FROM ctrip.audit_chain_head FOR UPDATE;
    NEW.id := head.last_id + 1;
    NEW.prev_hash := head.last_hash;
    NEW.hash := sha256(head.last_hash || ctrip.audit_encoding(NEW));
    UPDATE ctrip.audit_chain_head SET last_id = NEW.id, last_hash = NEW.hash;
    RETURN NEW;
END
$$;

CREATE FUNCTION ctrip.audit_reject_change()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_chain BEFORE INSERT ON ctrip.audit_events
    FOR EACH ROW EXECUTE FUNCTION ctrip.audit_chain();
CREATE TRIGGER audit_no_update_delete BEFORE UPDATE OR DELETE ON ctrip.audit_events
    FOR EACH ROW EXECUTE FUNCTION ctrip.audit_reject_change();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON ctrip.audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION ctrip.audit_reject_change();

-- The server may add events for its own merchant (or for no merchant, such as a failed
-- authentication) and read its own merchant's events.
ALTER TABLE ctrip.audit_events ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY owner_all ON ctrip.audit_events TO ctrip_owner USING (true) WITH CHECK (true);
CREATE POLICY app_insert ON ctrip.audit_events FOR INSERT TO ctrip_app
    WITH CHECK (merchant_id IS NULL OR merchant_id = (SELECT ctrip.current_merchant()));
CREATE POLICY app_select ON ctrip.audit_events FOR SELECT TO ctrip_app
    USING (merchant_id = (SELECT ctrip.current_merchant()));

-- A status change is audited in the transaction that makes it, whoever makes it.
CREATE FUNCTION ctrip.audit_payment_status()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO ctrip.audit_events
        (actor_type, actor_id, merchant_id, action, object_type, object_id, outcome, details)
    VALUES ('system', current_user, NEW.merchant_id, 'payment.status_changed', 'payment',
            NEW.id::text, 'success',
            jsonb_build_object('from', OLD.status, 'to', NEW.status));
    RETURN NEW;
END
$$;
CREATE TRIGGER payment_status_audit AFTER UPDATE OF status ON ctrip.payments
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION ctrip.audit_payment_status();

-- Reporting views: no personal fields (reference, metadata), all merchants. The view runs
-- with its owner's rights, so ctrip_readonly needs no privilege on the tables themselves.
CREATE VIEW ctrip.payments_report AS
    SELECT p.id, p.merchant_id, m.name AS merchant_name, p.chain, p.token, p.amount,
           p.status, p.confirmations, p.created_at, p.expires_at
    FROM ctrip.payments p JOIN ctrip.merchants m ON m.id = p.merchant_id;

-- Grants: exactly what the server uses. Earlier grants are replaced.
REVOKE ALL ON ALL TABLES IN SCHEMA ctrip FROM ctrip_app, ctrip_readonly;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA ctrip FROM ctrip_app, ctrip_readonly;
GRANT USAGE ON SCHEMA ctrip TO ctrip_app, ctrip_readonly;
GRANT SELECT ON ctrip.schema_migrations, ctrip.chains, ctrip.tokens TO ctrip_app;
GRANT SELECT, INSERT ON ctrip.deposit_addresses TO ctrip_app;
GRANT SELECT, INSERT ON ctrip.payments TO ctrip_app;
GRANT SELECT (id, merchant_id, last_used_at) ON ctrip.api_keys TO ctrip_app;
GRANT UPDATE (last_used_at) ON ctrip.api_keys TO ctrip_app;
GRANT SELECT, INSERT ON ctrip.audit_events TO ctrip_app;
GRANT USAGE ON SEQUENCE ctrip.deposit_index_evm, ctrip.deposit_index_solana TO ctrip_app;
GRANT EXECUTE ON FUNCTION ctrip.begin_request(text, bytea), ctrip.current_merchant(),
    ctrip.payment_merchant(uuid) TO ctrip_app;
GRANT SELECT ON ctrip.payments_report TO ctrip_readonly;
GRANT SELECT ON ctrip.audit_chain_head TO ctrip_app;
