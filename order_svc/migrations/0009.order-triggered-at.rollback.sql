ALTER TABLE orders.orders DROP CONSTRAINT IF EXISTS triggered_of_stops;
ALTER TABLE orders.orders DROP COLUMN IF EXISTS triggered_at;
