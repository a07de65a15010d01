-- depends: 0002.ledger-holds
-- Settlement of fills.
--
-- ledger.executions is the ledger's journal of the engine's executions it has applied, one row
-- per execution id, forever: a repeat is dropped by its id. A fill captures the buyer's cash
-- hold into '$clearing' and the seller's share hold into the buyer's share book; the seller's
-- proceeds are owed by clearing until settlement (T+1), when `stockmesh settle` moves them
-- from '$clearing' to the seller's cash as a balanced entry.

CREATE TABLE ledger.executions (
    execution_id       text PRIMARY KEY,
    symbol             text NOT NULL,
    type               text NOT NULL,
    order_id           text NOT NULL,
    account_id         text NOT NULL,
    counter_order_id   text NOT NULL DEFAULT '',
    counter_account_id text NOT NULL DEFAULT '',
    side               text NOT NULL DEFAULT '',
    price              numeric(18, 4),
    quantity           bigint NOT NULL DEFAULT 0,
    trade_date         date NOT NULL,
    executed_at        timestamptz NOT NULL,
    applied_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX executions_fills_by_day ON ledger.executions (trade_date) WHERE type = 'FILL';

-- Quantity and cost basis per position (average cost = cost / quantity).
CREATE TABLE ledger.positions (
    account_id text NOT NULL,
    symbol     text NOT NULL,
    quantity   bigint NOT NULL CHECK (quantity >= 0),
    cost       numeric(28, 8) NOT NULL CHECK (cost >= 0),
    PRIMARY KEY (account_id, symbol)
);

-- Sale proceeds owed to the seller until settlement.
CREATE TABLE ledger.unsettled (
    fill_id      text PRIMARY KEY REFERENCES ledger.executions (execution_id),
    account_id   text NOT NULL,
    amount       numeric(24, 4) NOT NULL CHECK (amount > 0),
    trade_date   date NOT NULL,
    settled_at   timestamptz,
    settle_entry uuid REFERENCES ledger.entries (entry_id),
    CONSTRAINT settled_once CHECK ((settled_at IS NULL) = (settle_entry IS NULL))
);
CREATE INDEX unsettled_open_by_account ON ledger.unsettled (account_id) WHERE settled_at IS NULL;
CREATE INDEX unsettled_open_by_day ON ledger.unsettled (trade_date) WHERE settled_at IS NULL;

INSERT INTO ledger.books (owner, asset, is_customer) VALUES ('$clearing', 'USD', false)
    ON CONFLICT (owner, asset) DO NOTHING;
