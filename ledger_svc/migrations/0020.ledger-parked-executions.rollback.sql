DROP TABLE IF EXISTS ledger.parked_executions;
