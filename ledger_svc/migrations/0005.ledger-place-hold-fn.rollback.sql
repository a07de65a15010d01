DROP FUNCTION ledger.place_hold(text, text, text, text, numeric);
