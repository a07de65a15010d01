DROP TRIGGER outbox_notify ON orders.outbox;
DROP FUNCTION orders.notify_outbox();
