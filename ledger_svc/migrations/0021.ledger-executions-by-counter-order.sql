-- depends: 0020.ledger-parked-executions
-- transactional: false
-- GetPortfolio lists the orders the account's holds are open for with the fills the ledger
-- has applied to each, in the snapshot of its cash and positions (adapters/settlement.py
-- `holdings`): an order's fills as the incoming order are found by executions_by_order (0018),
-- those as the resting order by this index. It covers every fill of a counter order, so it
-- takes the place of 0018's executions_filling_counter (those that ended it: HOLD_OPEN's
-- lookup), which would be one more index to write with each execution. Built CONCURRENTLY, as
-- 0018's: the ledger goes on applying executions while it builds; run again after a failed
-- build, it starts anew.
DROP INDEX CONCURRENTLY IF EXISTS ledger.executions_by_counter_order;
CREATE INDEX CONCURRENTLY executions_by_counter_order ON ledger.executions (counter_order_id) WHERE type = 'FILL';
DROP INDEX CONCURRENTLY IF EXISTS ledger.executions_filling_counter;
