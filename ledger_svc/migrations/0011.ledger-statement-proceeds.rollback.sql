DROP INDEX ledger.unsettled_statement;
ALTER TABLE ledger.unsettled DROP COLUMN activity_id, DROP COLUMN description, DROP COLUMN created_at;
