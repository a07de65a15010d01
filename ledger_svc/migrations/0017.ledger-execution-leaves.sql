-- depends: 0016.ledger-request-replies
-- Reconciliation names every hold still pending after its order ended (HOLD_OPEN). It saw the
-- orders the engine ended (CANCELLED, EXPIRED, REJECTED, REPLACED) but not those a fill ended:
-- the ledger kept no fill's leaves (acceptance round 16, code review 4). Each execution now
-- keeps what the engine said was left of its order and of the counter order. Rows applied
-- before this migration have none (NULL): a hold of an order filled then is not looked at.
ALTER TABLE ledger.executions ADD COLUMN leaves bigint, ADD COLUMN counter_leaves bigint;
-- The executions that name an order (the checks look for one of each held order's).
CREATE INDEX executions_by_order ON ledger.executions (order_id);
CREATE INDEX executions_filling_counter ON ledger.executions (counter_order_id)
    WHERE type = 'FILL' AND counter_leaves = 0;
-- A replace's reserve, looked up from its hold.
CREATE INDEX hold_transfers_by_reserve ON ledger.hold_transfers (reserve_hold_id) WHERE reserve_hold_id IS NOT NULL;
