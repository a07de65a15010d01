-- depends: 0002.order-tables
-- The order lifecycle after acceptance, from the engine's executions, and the per-account
-- stream of order updates.
--
-- orders.executions_applied drops repeated executions by id, forever. Every change of an
-- order is one row of orders.updates with a per-account sequence without gaps (taken from
-- orders.account_sequences in the transaction that makes the change), so a client that
-- reconnects with the last sequence it saw gets exactly what it missed.

ALTER TABLE orders.orders ADD COLUMN fill_notional numeric(28, 4) NOT NULL DEFAULT 0;

CREATE TABLE orders.executions_applied (
    execution_id text PRIMARY KEY,
    applied_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders.account_sequences (
    account_id    text PRIMARY KEY,
    last_sequence bigint NOT NULL
);

CREATE TABLE orders.updates (
    account_id         text NOT NULL,
    sequence           bigint NOT NULL CHECK (sequence > 0),
    order_id           uuid NOT NULL REFERENCES orders.orders (order_id),
    status             text NOT NULL,
    filled_quantity    bigint NOT NULL,
    fill_notional      numeric(28, 4) NOT NULL,
    reject_reason      text,
    reject_message     text NOT NULL,
    replaced_by        uuid,
    updated_at         timestamptz NOT NULL,
    fill_id            text,
    fill_price         numeric(18, 4),
    fill_quantity      bigint,
    executed_at        timestamptz,
    PRIMARY KEY (account_id, sequence)
);
ALTER TABLE orders.orders DROP COLUMN average_fill_price;
