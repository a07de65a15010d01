DROP TRIGGER IF EXISTS unsettled_forward_only ON ledger.unsettled;
DROP FUNCTION IF EXISTS ledger.check_unsettled_change();
