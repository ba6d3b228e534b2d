-- Audited pruning of audit events older than the retention period (at least 12 months).
--
-- Runs as ctrip_owner, after 0005: both replace ctrip.audit_reject_change(), and this
-- version keeps the exception 0005 added for chaining rows at commit.

-- Pruned ranges of the audit log. The row before the first kept event is gone, so
-- `ctrip audit verify` starts the chain from last_hash of the newest prune. With the audit
-- key it also checks signature: the ed25519 signature of the checkpoint line for last_id and
-- last_hash, made before the rows were deleted.
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

-- UPDATE is allowed only to chain a pending row at commit (0005). DELETE is allowed only for
-- chained rows inside a prune range that this very transaction recorded, which only
-- ctrip.audit_prune() does. TRUNCATE stays rejected always.
CREATE OR REPLACE FUNCTION ctrip.audit_reject_change()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.id < 0 AND OLD.hash IS NULL
        AND current_setting('ctrip.audit_chaining', true) = 'on' THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'DELETE' AND OLD.id > 0 AND EXISTS (
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
-- row p_last_id has the hash the caller signed. Then it records the range, deletes it, and
-- appends an audit.pruned event, all in the caller's transaction. Rows still pending
-- (negative ids, chained at commit) are never touched.
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
    SELECT min(id) INTO v_first_id FROM ctrip.audit_events WHERE id > 0;
    IF v_first_id IS NULL OR p_last_id < v_first_id THEN
        RAISE EXCEPTION 'no audit events up to row % are left to prune', p_last_id
            USING ERRCODE = 'no_data_found';
    END IF;
    IF EXISTS (SELECT FROM ctrip.audit_events
               WHERE id BETWEEN v_first_id AND p_last_id AND occurred_at >= p_cutoff) THEN
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
    FROM ctrip.audit_events WHERE id BETWEEN v_first_id AND p_last_id;
    DELETE FROM ctrip.audit_events WHERE id BETWEEN v_first_id AND p_last_id;
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
