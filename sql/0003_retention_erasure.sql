-- Retention and erasure of personal data, and audited pruning of old audit events.
--
-- Runs as ctrip_owner. The personal fields of a payment are reference and metadata; amount,
-- chain, address, status, timestamps and transaction data stay for accounting.

-- final_at: when the payment reached a final state (paid, settled, expired or failed);
-- retention counts from it. erased_at: when its personal fields were erased.
ALTER TABLE ctrip.payments
    ADD COLUMN final_at timestamptz,
    ADD COLUMN erased_at timestamptz;

-- Payments already final get their last update time, the best record there is.
UPDATE ctrip.payments SET final_at = updated_at
WHERE status IN ('paid', 'settled', 'expired', 'failed');

CREATE FUNCTION ctrip.payment_set_final_at()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
BEGIN
    IF NEW.status IN ('paid', 'settled', 'expired', 'failed') THEN
        -- The first final state counts: paid then settled keeps the time of paid.
        IF TG_OP = 'INSERT' OR OLD.final_at IS NULL THEN
            NEW.final_at := now();
        ELSE
            NEW.final_at := OLD.final_at;
        END IF;
    ELSE
        NEW.final_at := NULL;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER payment_final_at BEFORE INSERT OR UPDATE OF status ON ctrip.payments
    FOR EACH ROW EXECUTE FUNCTION ctrip.payment_set_final_at();

-- Erasing sets reference to NULL and metadata to {}; the first such update records the time,
-- and erasing again keeps it.
CREATE FUNCTION ctrip.payment_set_erased_at()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
BEGIN
    IF NEW.reference IS NULL AND NEW.metadata = '{}'::jsonb THEN
        NEW.erased_at := coalesce(OLD.erased_at, now());
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER payment_erased_at BEFORE UPDATE OF reference, metadata ON ctrip.payments
    FOR EACH ROW EXECUTE FUNCTION ctrip.payment_set_erased_at();

-- A key may hold payments:erase, for POST /api/v1/payments/{id}/erase.
ALTER TABLE ctrip.api_keys
    DROP CONSTRAINT api_keys_scopes_known,
    ADD CONSTRAINT api_keys_scopes_known CHECK (
        scopes <@ ARRAY['payments:read', 'payments:write', 'payments:erase']
        AND cardinality(scopes) > 0
    );

-- The server may change exactly the personal columns, of its merchant's rows only (the
-- app_own_merchant policy applies to UPDATE as to every other command).
GRANT UPDATE (reference, metadata) ON ctrip.payments TO ctrip_app;

-- When the retention job last ran, so several ctrip processes run it once per interval.
CREATE TABLE ctrip.retention_state (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_run_at timestamptz
);
INSERT INTO ctrip.retention_state VALUES (true, NULL);

-- Pruned ranges of the audit log. The row before the first kept event is gone, so
-- `ctrip audit verify` starts the chain from last_hash of the newest prune, and checks
-- signature (ed25519 over the checkpoint line for last_id and last_hash, made with the audit
-- key before the rows were deleted) when it has the key.
CREATE TABLE ctrip.audit_prunes (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pruned_at      timestamptz NOT NULL DEFAULT now(),
    first_id       bigint NOT NULL,
    last_id        bigint NOT NULL,
    last_hash      bytea NOT NULL CHECK (octet_length(last_hash) = 32),
    rows           bigint NOT NULL,
    cutoff         timestamptz NOT NULL,
    signed_at      text NOT NULL,
    signature      bytea NOT NULL CHECK (octet_length(signature) = 64),
    -- The transaction that pruned; the append-only trigger lets only it delete the range.
    transaction_id bigint NOT NULL DEFAULT txid_current(),
    CHECK (first_id >= 1 AND last_id >= first_id)
);

-- DELETE stays rejected unless this very transaction recorded a prune range holding the
-- row, which only ctrip.audit_prune() does. UPDATE and TRUNCATE stay rejected always.
CREATE OR REPLACE FUNCTION ctrip.audit_reject_change()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
BEGIN
    IF TG_OP = 'DELETE' AND EXISTS (
        SELECT FROM ctrip.audit_prunes p
        WHERE p.transaction_id = txid_current() AND OLD.id BETWEEN p.first_id AND p.last_id
    ) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_events is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

-- Deletes the oldest audit events through p_last_id. Owner only (EXECUTE is not granted to
-- anyone else). It checks, whatever the caller's configuration, that every deleted event is
-- older than 12 months (PCI DSS v4.0 requirement 10.5.1) and older than p_cutoff, and that
-- row p_last_id has the hash the caller signed; then it records the range, deletes it, and
-- appends an audit.pruned event, all in the caller's transaction.
CREATE FUNCTION ctrip.audit_prune(
    p_last_id bigint, p_last_hash bytea, p_cutoff timestamptz, p_signed_at text,
    p_signature bytea, p_actor_type text, p_actor_id text
)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_first_id bigint;
    v_deleted  bigint;
BEGIN
    IF p_cutoff > now() - interval '12 months' THEN
        RAISE EXCEPTION 'audit events are kept at least 12 months (PCI DSS 10.5.1): cutoff % is too recent', p_cutoff
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT min(id) INTO v_first_id FROM ctrip.audit_events;
    IF v_first_id IS NULL OR p_last_id < v_first_id THEN
        RAISE EXCEPTION 'no audit events up to row % are left to prune', p_last_id
            USING ERRCODE = 'no_data_found';
    END IF;
    IF EXISTS (SELECT FROM ctrip.audit_events WHERE id <= p_last_id AND occurred_at >= p_cutoff) THEN
        RAISE EXCEPTION 'rows up to % include events at or after the cutoff %', p_last_id, p_cutoff
            USING ERRCODE = 'check_violation';
    END IF;
    IF NOT EXISTS (SELECT FROM ctrip.audit_events WHERE id = p_last_id AND hash = p_last_hash) THEN
        RAISE EXCEPTION 'row % does not have the hash that was signed', p_last_id
            USING ERRCODE = 'check_violation';
    END IF;
    INSERT INTO ctrip.audit_prunes
        (first_id, last_id, last_hash, rows, cutoff, signed_at, signature)
    SELECT v_first_id, p_last_id, p_last_hash, count(*), p_cutoff, p_signed_at, p_signature
    FROM ctrip.audit_events WHERE id <= p_last_id;
    DELETE FROM ctrip.audit_events WHERE id <= p_last_id;
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    INSERT INTO ctrip.audit_events
        (actor_type, actor_id, action, object_type, object_id, outcome, details)
    VALUES (p_actor_type, p_actor_id, 'audit.pruned', 'audit_events',
            v_first_id || '-' || p_last_id, 'success',
            jsonb_build_object('first_id', v_first_id, 'last_id', p_last_id,
                               'rows', v_deleted, 'cutoff', p_cutoff,
                               'last_hash', encode(p_last_hash, 'hex')));
    RETURN v_deleted;
END
$$;
REVOKE ALL ON FUNCTION ctrip.audit_prune(bigint, bytea, timestamptz, text, bytea, text, text)
    FROM PUBLIC;
