-- depends: 0017.ledger-execution-leaves
-- transactional: false
-- What HOLD_OPEN looks up for each pending hold (0017): the executions naming its order, a
-- fill that ended it as the counter order, and a replace's reserve by its hold. Built
-- CONCURRENTLY, as 0013 and 0015: the ledger goes on applying executions and taking replaces
-- while they build (in 0017's transaction they held its tables for the whole build); run
-- again after a failed build, each starts anew.
DROP INDEX CONCURRENTLY IF EXISTS ledger.executions_by_order;
CREATE INDEX CONCURRENTLY executions_by_order ON ledger.executions (order_id);
DROP INDEX CONCURRENTLY IF EXISTS ledger.executions_filling_counter;
CREATE INDEX CONCURRENTLY executions_filling_counter ON ledger.executions (counter_order_id)
    WHERE type = 'FILL' AND counter_leaves = 0;
DROP INDEX CONCURRENTLY IF EXISTS ledger.hold_transfers_by_reserve;
CREATE INDEX CONCURRENTLY hold_transfers_by_reserve ON ledger.hold_transfers (reserve_hold_id)
    WHERE reserve_hold_id IS NOT NULL;
