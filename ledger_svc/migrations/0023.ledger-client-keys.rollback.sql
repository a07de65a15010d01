DROP FUNCTION IF EXISTS ledger.register_client_keys(text, text[], text[], text[]);
DROP FUNCTION IF EXISTS ledger.place_holds_keyed_v2(text, text[], text[], text[], text[], numeric[], text[], boolean[]);
DROP FUNCTION IF EXISTS ledger.place_hold_keyed_v2(text, text, text, text, numeric, text, boolean);
DROP TABLE IF EXISTS ledger.client_keys;
