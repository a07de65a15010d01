DROP FUNCTION IF EXISTS ledger.place_hold_keyed(text, text, text, text, numeric, text);
DROP INDEX IF EXISTS ledger.holds_client_key;
ALTER TABLE ledger.holds DROP COLUMN IF EXISTS client_key;
