DROP INDEX ledger.entries_request_key;
ALTER TABLE ledger.entries DROP COLUMN request_key;
