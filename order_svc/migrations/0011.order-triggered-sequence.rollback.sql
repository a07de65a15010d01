ALTER TABLE orders.orders DROP COLUMN IF EXISTS triggered_sequence;
