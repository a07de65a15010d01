-- depends: 0010.order-open-index
-- The sequence of the OrderUpdate that told the account a STOP / STOP_LIMIT order was
-- triggered: a stream's replay shows the updates before it untriggered. triggered_at (the
-- engine's time) cannot tell: a stop that triggers on arrival is triggered at its acceptance,
-- before its NEW update was recorded (round 14: the replay showed NEW triggered, the live
-- stream did not). Orders triggered before this migration have none (the time decides).
ALTER TABLE orders.orders ADD COLUMN triggered_sequence bigint;
