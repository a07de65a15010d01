-- depends: 0009.order-triggered-at
-- transactional: false
-- An account's orders that are not over yet (PENDING_NEW, NEW, PARTIALLY_FILLED), newest first:
-- what ListOrders' status filter for working orders and GetPortfolio's open_orders read, without
-- walking the account's whole history (orders_account) past every filled and cancelled one.
-- `status` already blocks HOT updates when it changes (orders_pending's predicate names it), so
-- this index costs an entry per new order and per change of status, nothing more. Built
-- CONCURRENTLY so that order_svc goes on taking orders while it builds (hence the directive
-- above); run again after a build that failed half-way (an INVALID index), it builds anew.
-- OrderRepository.list names this predicate literally; change both together.
DROP INDEX CONCURRENTLY IF EXISTS orders.orders_open;
CREATE INDEX CONCURRENTLY orders_open ON orders.orders (account_id, created_at DESC, order_id DESC)
 WHERE status IN ('PENDING_NEW', 'NEW', 'PARTIALLY_FILLED');
