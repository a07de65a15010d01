-- depends: 0003.order-updates
-- ReplaceOrder: the replacement of an order is found by `replaces` (at most one waits for the
-- engine at a time; the engine's REPLACED / CANCEL_REJECTED resolve it).
CREATE INDEX orders_replaces ON orders.orders (replaces) WHERE replaces IS NOT NULL;
