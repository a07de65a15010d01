-- depends: 0004.ledger-hold-transfers
-- Placing a hold as one statement (one round trip, its own transaction): the idempotent
-- insert, the reservation and the audit event, atomically. Same rules as before:
--   * a hold id placed before returns that hold (outcome EXISTS; the caller compares the
--     request, a different one is DuplicateHoldId);
--   * a book the account never had, or less available than asked, is a refusal
--     (outcome INSUFFICIENT, with what is available) and changes nothing;
--   * otherwise the hold is recorded PENDING, held grows by its amount (the CHECK
--     available_not_negative on ledger.balances stays the backstop) and HOLD_PLACED is
--     appended to the account's audit chain (outcome PLACED).
-- Racing holds on one book queue on its balance row (FOR UPDATE) and each sees the previous
-- one's result; a placement of the same id that committed while we waited is found again.
-- The audit payload is the canonical JSON meshkit.audit.canonical() writes for the hold
-- (sorted keys, no spaces, numbers as the column's text).
CREATE FUNCTION ledger.place_hold(
    p_hold_id text, p_account_id text, p_order_id text, p_asset text, p_amount numeric,
    OUT r_outcome text, OUT r_available numeric,
    OUT r_hold_id text, OUT r_account_id text, OUT r_order_id text, OUT r_asset text, OUT r_amount numeric,
    OUT r_captured numeric, OUT r_released numeric, OUT r_status text, OUT r_created_at timestamptz,
    OUT r_resolved_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    h ledger.holds%ROWTYPE;
    v_book bigint;
BEGIN
    SELECT * INTO h FROM ledger.holds WHERE hold_id = p_hold_id;
    IF FOUND THEN
        r_outcome := 'EXISTS';
    ELSE
        SELECT book_id INTO v_book FROM ledger.books WHERE owner = p_account_id AND asset = p_asset;
        IF v_book IS NULL THEN  -- the account never had any of this asset
            r_outcome := 'INSUFFICIENT';
            r_available := 0;
            RETURN;
        END IF;
        SELECT posted - held INTO r_available FROM ledger.balances WHERE book_id = v_book FOR UPDATE;
        r_available := coalesce(r_available, 0);
        IF r_available < p_amount THEN
            -- the same id may have been placed (and committed) while we waited for the row
            SELECT * INTO h FROM ledger.holds WHERE hold_id = p_hold_id;
            IF NOT FOUND THEN
                r_outcome := 'INSUFFICIENT';
                RETURN;
            END IF;
            r_outcome := 'EXISTS';
        ELSE
            INSERT INTO ledger.holds (hold_id, account_id, book_id, order_id, asset, amount)
            VALUES (p_hold_id, p_account_id, v_book, p_order_id, p_asset, p_amount)
            ON CONFLICT (hold_id) DO NOTHING
            RETURNING * INTO h;
            IF FOUND THEN
                UPDATE ledger.balances SET held = held + h.amount WHERE book_id = v_book;
                PERFORM audit.append('ledger:' || h.account_id, 'HOLD_PLACED',
                    '{"account":' || to_json(h.account_id)::text
                    || ',"amount":"' || h.amount::text
                    || '","asset":' || to_json(h.asset)::text
                    || ',"captured":"' || h.captured::text
                    || '","holdId":' || to_json(h.hold_id)::text
                    || ',"orderId":' || to_json(h.order_id)::text
                    || ',"released":"' || h.released::text
                    || '","status":' || to_json(h.status)::text || '}');
                r_outcome := 'PLACED';
            ELSE  -- placed concurrently under another book (a different request): report it
                SELECT * INTO h FROM ledger.holds WHERE hold_id = p_hold_id;
                r_outcome := 'EXISTS';
            END IF;
        END IF;
    END IF;
    r_hold_id := h.hold_id; r_account_id := h.account_id; r_order_id := h.order_id; r_asset := h.asset;
    r_amount := h.amount; r_captured := h.captured; r_released := h.released; r_status := h.status;
    r_created_at := h.created_at; r_resolved_at := h.resolved_at;
END $$;
