DROP TABLE ledger.journal_trims;
