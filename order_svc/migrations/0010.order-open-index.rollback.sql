-- transactional: false
DROP INDEX CONCURRENTLY IF EXISTS orders.orders_open;
