DROP FUNCTION IF EXISTS ledger.place_holds_keyed(text, text[], text[], text[], text[], numeric[], text[]);
