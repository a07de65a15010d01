DROP INDEX orders.orders_replaces;
