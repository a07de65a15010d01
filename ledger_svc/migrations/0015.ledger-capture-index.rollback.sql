-- transactional: false
DROP INDEX CONCURRENTLY IF EXISTS ledger.hold_captures_capture;
