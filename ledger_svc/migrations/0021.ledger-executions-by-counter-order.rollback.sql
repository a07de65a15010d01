-- transactional: false
DROP INDEX CONCURRENTLY IF EXISTS ledger.executions_filling_counter;
CREATE INDEX CONCURRENTLY executions_filling_counter ON ledger.executions (counter_order_id)
    WHERE type = 'FILL' AND counter_leaves = 0;
DROP INDEX CONCURRENTLY IF EXISTS ledger.executions_by_counter_order;
