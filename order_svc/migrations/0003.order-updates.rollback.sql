DROP TABLE orders.updates;
DROP TABLE orders.account_sequences;
DROP TABLE orders.executions_applied;
ALTER TABLE orders.orders DROP COLUMN fill_notional;
ALTER TABLE orders.orders ADD COLUMN average_fill_price numeric(18, 4);
