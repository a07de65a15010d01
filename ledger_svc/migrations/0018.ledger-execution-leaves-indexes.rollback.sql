-- transactional: false
DROP INDEX CONCURRENTLY IF EXISTS ledger.hold_transfers_by_reserve;
DROP INDEX CONCURRENTLY IF EXISTS ledger.executions_filling_counter;
DROP INDEX CONCURRENTLY IF EXISTS ledger.executions_by_order;
