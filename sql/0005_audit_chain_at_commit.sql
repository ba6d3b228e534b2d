-- Chain audit rows at COMMIT instead of at INSERT.
--
-- Before this, the INSERT took the chain head's row lock and held it until the client's
-- COMMIT arrived, so every audited transaction waited for the previous one's network round
-- trip. Now an INSERT stores the row unchained (a negative id, no hashes), and a deferred
-- constraint trigger numbers and hashes it while the transaction commits, so the lock is held
-- only for the server-side part of COMMIT. The chain itself is unchanged: ids without gaps,
-- hash = SHA-256(prev_hash || encoding of the row's fields).

CREATE SEQUENCE ctrip.audit_pending_id AS bigint;

ALTER TABLE ctrip.audit_events
    ALTER COLUMN prev_hash DROP NOT NULL,
    ALTER COLUMN hash DROP NOT NULL,
    ADD CONSTRAINT audit_events_chained_or_pending CHECK (
        (id > 0 AND prev_hash IS NOT NULL AND hash IS NOT NULL)
        OR (id < 0 AND prev_hash IS NULL AND hash IS NULL)
    );

-- At INSERT: a provisional negative id; no lock is taken.
CREATE OR REPLACE FUNCTION ctrip.audit_chain()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.id := -nextval('ctrip.audit_pending_id');
    NEW.prev_hash := NULL;
    NEW.hash := NULL;
    RETURN NEW;
END
$$;

-- At COMMIT: take the head, give the row the next id and its hashes.
CREATE FUNCTION ctrip.audit_chain_at_commit()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    head record;
    chained ctrip.audit_events;
BEGIN
    -- WHERE singleton lets the primary key find the one row instead of scanning every page the
    -- table's dead versions leave behind, all while the lock is held.
    SELECT last_id, last_hash INTO head FROM ctrip.audit_chain_head WHERE singleton FOR UPDATE;
    SELECT * INTO chained FROM ctrip.audit_events WHERE id = NEW.id;
    chained.id := head.last_id + 1;
    chained.prev_hash := head.last_hash;
    chained.hash := sha256(head.last_hash || ctrip.audit_encoding(chained));
    PERFORM set_config('ctrip.audit_chaining', 'on', true);
    UPDATE ctrip.audit_events
    SET id = chained.id, prev_hash = chained.prev_hash, hash = chained.hash
    WHERE id = NEW.id;
    PERFORM set_config('ctrip.audit_chaining', 'off', true);
    UPDATE ctrip.audit_chain_head SET last_id = chained.id, last_hash = chained.hash WHERE singleton;
    RETURN NULL;
END
$$;

-- The changes allowed: chaining a pending row, from the commit trigger above, and deleting a
-- range that ctrip.audit_prune() recorded in this transaction (see 0003).
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

CREATE CONSTRAINT TRIGGER audit_chain_at_commit
    AFTER INSERT ON ctrip.audit_events
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ctrip.audit_chain_at_commit();

