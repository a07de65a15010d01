ALTER TABLE ledger.executions DROP COLUMN IF EXISTS counter_leaves, DROP COLUMN IF EXISTS leaves;
