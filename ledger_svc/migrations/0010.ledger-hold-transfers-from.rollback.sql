DROP INDEX IF EXISTS ledger.hold_transfers_from;
