-- depends: 0003.ledger-settlement
-- Hold transfers: an order's hold moving to the order that replaces it (ReplaceOrder).
--
-- Phase 1 (when the customer asks): the row is recorded and, if the new order may need more
-- than the old hold can free, `reserve` more is held under its own hold
-- ('<to_hold_id>:reserve', conditional on availability like any hold).
-- Phase 2 (when the ledger applies the engine's REPLACED execution): the old hold and the
-- reserve are released and the new hold (hold_id = the new order id) opens with
-- unit_amount x the new open quantity, in one transaction: `held` moves only by the
-- difference. The engine refusing the replace releases the reserve instead (CANCELLED).
CREATE TABLE ledger.hold_transfers (
    to_hold_id      text PRIMARY KEY,
    from_hold_id    text NOT NULL,
    order_id        text NOT NULL,
    account_id      text NOT NULL,
    asset           text NOT NULL,
    unit_amount     numeric(24, 4) NOT NULL CHECK (unit_amount > 0),
    reserve         numeric(24, 4) NOT NULL CHECK (reserve >= 0),
    reserve_hold_id text REFERENCES ledger.holds (hold_id),
    status          text NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'COMPLETED', 'CANCELLED')),
    moved           numeric(24, 4),
    new_amount      numeric(24, 4),
    created_at      timestamptz NOT NULL DEFAULT now(),
    resolved_at     timestamptz,
    CONSTRAINT hold_transfers_reserve_hold CHECK ((reserve > 0) = (reserve_hold_id IS NOT NULL)),
    CONSTRAINT hold_transfers_resolution CHECK ((status = 'PENDING') = (resolved_at IS NULL))
);
-- At most one transfer in flight from a hold (order_svc allows one pending replace per order).
CREATE UNIQUE INDEX hold_transfers_pending_from ON ledger.hold_transfers (from_hold_id) WHERE status = 'PENDING';
