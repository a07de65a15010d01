ALTER TABLE orders.orders DROP CONSTRAINT IF EXISTS end_reason_of_ended;
ALTER TABLE orders.orders DROP COLUMN IF EXISTS end_reason;
