-- transactional: false
DROP INDEX CONCURRENTLY IF EXISTS ledger.holds_client_key;
