-- depends: 0001.ledger-init
-- Two-phase holds (reserve, capture, release), modelled on TigerBeetle's pending transfers.
--
-- A hold reserves part of one customer book (an account's USD, or its shares of a symbol):
-- ledger.balances.held grows by the hold's amount, and the existing CHECK
-- (posted - held >= 0) keeps the available balance from going below zero however many holds
-- race on the book. A hold is not a posting: nothing moves until it is captured.
--
-- A capture moves part of what is still held to a counter-account as a balanced journal entry
-- (kind HOLD_CAPTURE): the book's posted and held both drop by the amount, so its available
-- balance is unchanged. A release gives back what is left (held drops). A hold resolves once:
-- CAPTURED when everything was captured, RELEASED when the rest was released; after that the
-- row never changes again (trigger below).

CREATE TABLE ledger.holds (
    hold_id     text PRIMARY KEY,
    -- Newest-first listing and page tokens.
    hold_seq    bigserial NOT NULL UNIQUE,
    account_id  text NOT NULL,
    book_id     bigint NOT NULL REFERENCES ledger.books (book_id),
    order_id    text NOT NULL,
    asset       text NOT NULL,
    amount      numeric(24, 4) NOT NULL,
    captured    numeric(24, 4) NOT NULL DEFAULT 0,
    released    numeric(24, 4) NOT NULL DEFAULT 0,
    status      text NOT NULL DEFAULT 'PENDING',
    created_at  timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    -- (PostgreSQL checks CHECK constraints in name order; the names keep the numeric rules
    -- ahead of the status rule so a violation names the most specific one.)
    CONSTRAINT holds_amount_positive CHECK (amount > 0),
    CONSTRAINT holds_captured_not_negative CHECK (captured >= 0),
    CONSTRAINT holds_released_not_negative CHECK (released >= 0),
    CONSTRAINT holds_resolved_within_amount CHECK (captured + released <= amount),
    CONSTRAINT holds_status_consistent CHECK (
        (status = 'PENDING' AND released = 0 AND captured < amount AND resolved_at IS NULL)
        OR (status = 'CAPTURED' AND released = 0 AND captured = amount AND resolved_at IS NOT NULL)
        OR (status = 'RELEASED' AND released > 0 AND captured + released = amount AND resolved_at IS NOT NULL))
);
CREATE INDEX holds_account ON ledger.holds (account_id, hold_seq DESC);
CREATE INDEX holds_pending_book ON ledger.holds (book_id) WHERE status = 'PENDING';

-- A capture is idempotent on (hold_id, capture_id): capture ids are scoped to their hold, so
-- one execution id can capture both the buyer's cash hold and the seller's share hold.
CREATE TABLE ledger.hold_captures (
    hold_id            text NOT NULL REFERENCES ledger.holds (hold_id),
    capture_id         text NOT NULL,
    amount             numeric(24, 4) NOT NULL CHECK (amount > 0),
    entry_id           uuid NOT NULL UNIQUE REFERENCES ledger.entries (entry_id),
    counter_account_id text NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (hold_id, capture_id)
);

-- A hold only moves forward while PENDING; once resolved it is history. Its identity and
-- amount never change, and captured / released never shrink.
CREATE FUNCTION ledger.check_hold_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'DELETE on ledger.holds is not allowed: holds are history'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF OLD.status <> 'PENDING' THEN
        RAISE EXCEPTION 'hold % is already resolved (%); a hold resolves once', OLD.hold_id, OLD.status
            USING ERRCODE = 'check_violation';
    END IF;
    IF (NEW.hold_id, NEW.hold_seq, NEW.account_id, NEW.book_id, NEW.order_id, NEW.asset, NEW.amount, NEW.created_at)
       IS DISTINCT FROM
       (OLD.hold_id, OLD.hold_seq, OLD.account_id, OLD.book_id, OLD.order_id, OLD.asset, OLD.amount, OLD.created_at) THEN
        RAISE EXCEPTION 'hold %: identity, asset and amount never change', OLD.hold_id
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.captured < OLD.captured OR NEW.released < OLD.released THEN
        RAISE EXCEPTION 'hold %: captured and released never decrease', OLD.hold_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER holds_forward_only BEFORE UPDATE OR DELETE ON ledger.holds
    FOR EACH ROW EXECUTE FUNCTION ledger.check_hold_change();
CREATE TRIGGER hold_captures_append_only BEFORE UPDATE OR DELETE ON ledger.hold_captures
    FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();

-- Shares entering an account from outside (a transfer in, or the simulator's funding): the
-- share counterpart of a cash DEPOSIT, with its own idempotency-key space.
ALTER TABLE ledger.entries DROP CONSTRAINT entries_kind_check;
ALTER TABLE ledger.entries ADD CONSTRAINT entries_kind_check
    CHECK (kind IN ('DEPOSIT', 'WITHDRAWAL', 'HOLD_CAPTURE', 'FILL', 'SETTLEMENT', 'SHARE_DEPOSIT'));

-- The default counter-account of captures (the street side of a trade, until settlement).
INSERT INTO ledger.books (owner, asset, is_customer) VALUES ('$clearing', 'USD', false)
    ON CONFLICT (owner, asset) DO NOTHING;
