DROP INDEX IF EXISTS ledger.holds_order_unchecked;
ALTER TABLE ledger.holds DROP COLUMN IF EXISTS order_checked;
