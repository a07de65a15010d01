DROP TABLE ledger.hold_transfers;
