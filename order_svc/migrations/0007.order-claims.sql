-- A new order is recorded once its hold is in place, in the statement that accepts (or
-- rejects) it. Its id is claimed here in that same statement, and order_svc's reaper claims the
-- id of a hold whose order it finds missing before it releases that hold: a primary-key insert
-- waits for an in-flight insert of the same key, so exactly one of the two wins, and once an
-- id is claimed no order with that id can be recorded later.
CREATE TABLE orders.claims (
    order_id   uuid PRIMARY KEY,
    claimed_by text NOT NULL CHECK (claimed_by IN ('order', 'reaper')),
    claimed_at timestamptz NOT NULL DEFAULT now()
);
