DROP TRIGGER IF EXISTS holds_fill_totals_only_grow ON ledger.holds;
DROP FUNCTION IF EXISTS ledger.check_hold_fill_totals();
