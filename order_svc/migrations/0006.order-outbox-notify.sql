-- depends: 0005.order-record-change-fn
-- Wakes the outbox relay, wherever it runs, when a transaction writes to the outbox: one
-- notification per statement (PostgreSQL delivers it at commit, and folds repeats within a
-- transaction into one). A relay in another process, or behind another order_svc replica,
-- no longer waits for its idle poll.
CREATE FUNCTION orders.notify_outbox() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('stockmesh_order_outbox', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_notify AFTER INSERT ON orders.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION orders.notify_outbox();
