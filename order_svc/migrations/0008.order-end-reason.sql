-- depends: 0007.order-claims
-- Why a CANCELLED or EXPIRED order ended (a REJECTED one has reject_reason): the customer's
-- cancel, the rest of an IOC or market order, self-trade prevention, a replace, the session's
-- close. Set with the order's last change; an order that ended before this migration has none.
ALTER TABLE orders.orders ADD COLUMN end_reason text;
ALTER TABLE orders.orders ADD CONSTRAINT end_reason_of_ended
    CHECK (end_reason IS NULL OR status IN ('CANCELLED', 'EXPIRED'));
