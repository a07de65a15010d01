-- depends: 0016.ledger-request-replies
-- Reconciliation names every hold still pending after its order ended (HOLD_OPEN). It saw the
-- orders the engine ended (CANCELLED, EXPIRED, REJECTED, REPLACED) but not those a fill ended:
-- the ledger kept no fill's leaves (acceptance round 16, code review 4). Each execution now
-- keeps what the engine said was left of its order and of the counter order. Rows applied
-- before this migration have none (NULL): a hold of an order filled then is not looked at.
-- (Columns without a default: no table rewrite. The indexes the checks use are 0018's, built
-- CONCURRENTLY.)
ALTER TABLE ledger.executions ADD COLUMN leaves bigint, ADD COLUMN counter_leaves bigint;
