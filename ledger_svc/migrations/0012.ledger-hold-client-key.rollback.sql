DROP FUNCTION IF EXISTS ledger.place_hold_keyed(text, text, text, text, numeric, text);
DROP INDEX IF EXISTS ledger.holds_client_key;  -- (0013's, when it was not rolled back first)
ALTER TABLE ledger.holds DROP COLUMN IF EXISTS client_key;
