-- depends: 0021.ledger-hold-fill-totals
-- A hold's fill totals (`filled`, `notional`: its order's fills the ledger has applied, which
-- GetPortfolio lists the order with; migration 0021) only grow, as its captured and released do
-- (0002's check_hold_change): a fill applied is never unapplied. Every statement that writes
-- them adds to them (Hold.count_fill, saved with the fill's capture or alone; 0021's backfill
-- adds what the journal had and the totals lacked) or writes them back unchanged (a release, a
-- transfer resolving the replaced hold; the new hold is inserted with the replaced one's), so
-- one writing less is a lost update (a hold read before a fill was counted, written back after
-- it) or a hand-made correction, and is refused with the hold's id and both values rather than
-- showing a customer's open order filled less than it was.
CREATE FUNCTION ledger.check_hold_fill_totals() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.filled < OLD.filled OR NEW.notional < OLD.notional THEN
        RAISE EXCEPTION 'hold %: filled and notional (its order''s fills applied) never decrease: filled % -> %, notional % -> %',
            OLD.hold_id, OLD.filled, NEW.filled, OLD.notional, NEW.notional
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER holds_fill_totals_only_grow BEFORE UPDATE OF filled, notional ON ledger.holds
    FOR EACH ROW EXECUTE FUNCTION ledger.check_hold_fill_totals();
