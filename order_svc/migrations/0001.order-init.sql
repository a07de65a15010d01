-- order_svc owns the `orders` schema; its tables arrive with the orders work.
CREATE SCHEMA IF NOT EXISTS orders;
