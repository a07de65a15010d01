-- depends: 0013.ledger-hold-client-key-index
-- A sale's proceeds owed until settlement (ledger.unsettled) are history too: what was sold,
-- to whom, for how much and on which day never changes, a row is never removed, and its
-- settlement is recorded once (acceptance round 14: an UPDATE adding 1,000.00 to a row showed
-- in the customer's portfolio at once, and settlement paid it out). Settlement also pays a row
-- only when its amount is what the fill's buyer paid into clearing (its `<fill>:cash`
-- capture, found by the index of 0015); reconciliation names the others (PROCEEDS_OFF_FILL).
CREATE FUNCTION ledger.check_unsettled_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR NEW.fill_id IS DISTINCT FROM OLD.fill_id OR NEW.account_id IS DISTINCT FROM OLD.account_id
       OR NEW.amount IS DISTINCT FROM OLD.amount OR NEW.trade_date IS DISTINCT FROM OLD.trade_date
       OR NEW.activity_id IS DISTINCT FROM OLD.activity_id OR NEW.description IS DISTINCT FROM OLD.description
       OR NEW.created_at IS DISTINCT FROM OLD.created_at OR OLD.settle_entry IS NOT NULL THEN
        RAISE EXCEPTION '% on %.% is not allowed: proceeds owed are history, only their settlement is recorded, once',
            TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER unsettled_forward_only BEFORE UPDATE OR DELETE ON ledger.unsettled
    FOR EACH ROW EXECUTE FUNCTION ledger.check_unsettled_change();
