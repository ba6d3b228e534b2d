-- Retention and erasure of personal data. Audited pruning of old audit events is in 0006,
-- because it must come after 0005, which also replaces ctrip.audit_reject_change().
--
-- Runs as ctrip_owner. The personal fields of a payment are reference and metadata. Amount,
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

-- Erasing sets reference to NULL and metadata to {}. The first such update records the time,
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
