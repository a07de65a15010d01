-- Orders, the hand-off outbox to the matching engine, and rate-limit-free idempotency:
-- client_order_id is unique per account, forever.

CREATE TABLE orders.orders (
    order_id           uuid PRIMARY KEY,
    account_id         text NOT NULL,
    client_order_id    text NOT NULL,
    fingerprint        text NOT NULL,
    symbol             text NOT NULL,
    side               text NOT NULL CHECK (side IN ('BUY', 'SELL')),
    type               text NOT NULL CHECK (type IN ('MARKET', 'LIMIT', 'STOP', 'STOP_LIMIT')),
    time_in_force      text NOT NULL CHECK (time_in_force IN ('DAY', 'GTC', 'IOC', 'FOK')),
    quantity           bigint NOT NULL CHECK (quantity > 0),
    limit_price        numeric(18, 4),
    stop_price         numeric(18, 4),
    status             text NOT NULL CHECK (status IN ('PENDING_NEW', 'NEW', 'PARTIALLY_FILLED', 'FILLED',
                                                        'CANCELLED', 'EXPIRED', 'REJECTED')),
    hold_asset         text NOT NULL,
    hold_amount        numeric(24, 4) NOT NULL CHECK (hold_amount >= 0),
    collar_price       numeric(18, 4),
    filled_quantity    bigint NOT NULL DEFAULT 0 CHECK (filled_quantity >= 0 AND filled_quantity <= quantity),
    average_fill_price numeric(18, 4),
    reject_reason      text,
    reject_message     text NOT NULL DEFAULT '',
    replaced_by        uuid,
    replaces           uuid,
    cancel_requested   boolean NOT NULL DEFAULT false,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    CONSTRAINT client_order_id_unique UNIQUE (account_id, client_order_id),
    CONSTRAINT rejected_has_reason CHECK ((status = 'REJECTED') = (reject_reason IS NOT NULL))
);
CREATE INDEX orders_account ON orders.orders (account_id, created_at DESC, order_id DESC);
-- The recovery loop's work list: orders whose placement saga has not finished.
CREATE INDEX orders_pending ON orders.orders (updated_at) WHERE status = 'PENDING_NEW';

-- Transactional outbox: written in the transaction that accepts / cancels an order, relayed
-- to JetStream (subject orders.<SYMBOL>, Nats-Msg-Id = msg_id) in id order.
CREATE TABLE orders.outbox (
    id           bigserial PRIMARY KEY,
    subject      text NOT NULL,
    msg_id       text NOT NULL UNIQUE,
    payload      bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_unpublished ON orders.outbox (id) WHERE published_at IS NULL;

-- Trading halts: a halted symbol's new orders are REJECTED / SYMBOL_HALTED.
CREATE TABLE orders.halts (
    symbol    text PRIMARY KEY,
    reason    text NOT NULL DEFAULT '',
    halted_at timestamptz NOT NULL DEFAULT now()
);
