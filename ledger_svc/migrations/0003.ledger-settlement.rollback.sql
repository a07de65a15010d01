DROP TABLE ledger.unsettled;
DROP TABLE ledger.positions;
DROP TABLE ledger.executions;
