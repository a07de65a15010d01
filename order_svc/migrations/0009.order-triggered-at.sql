-- depends: 0008.order-end-reason
-- When a STOP or STOP_LIMIT order's stop was reached (the engine's TRIGGERED, as order_svc
-- applied it): from then on it works as a market (STOP) or limit (STOP_LIMIT) order. Also on
-- the replacement of a triggered order. An order triggered before this migration has none.
ALTER TABLE orders.orders ADD COLUMN triggered_at timestamptz;
ALTER TABLE orders.orders ADD CONSTRAINT triggered_of_stops
    CHECK (triggered_at IS NULL OR type IN ('STOP', 'STOP_LIMIT'));
