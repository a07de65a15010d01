DROP INDEX IF EXISTS ledger.hold_transfers_by_reserve;
DROP INDEX IF EXISTS ledger.executions_filling_counter;
DROP INDEX IF EXISTS ledger.executions_by_order;
ALTER TABLE ledger.executions DROP COLUMN IF EXISTS counter_leaves, DROP COLUMN IF EXISTS leaves;
