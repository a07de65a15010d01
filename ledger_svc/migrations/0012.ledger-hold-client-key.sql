-- depends: 0011.ledger-statement-proceeds
-- A hold may carry its account's own key for what it is for (order_svc passes the order's
-- client_order_id): at most one hold of an account ever carries a given key. A hold asked for
-- under a key that another hold of the account carries (under another hold id) is refused with
-- outcome KEY_TAKEN, naming that hold and its order, and nothing changes. So a
-- client_order_id reused with other parameters is refused by the hold statement itself,
-- instead of a hold being placed and given back once the order's insert finds the id taken.
-- Holds placed before this migration, transfers' holds and holds placed without a key carry
-- none (NULL: not unique). A partial unique index (account, key) is the backstop (0013, built
-- without blocking writes); the check below, after the account's lock (0007) that every
-- placement on the account takes first, is what answers.
ALTER TABLE ledger.holds ADD COLUMN client_key text;

-- ledger.place_hold (0005) after its account (0007), with the key: the same outcomes (PLACED,
-- EXISTS, INSUFFICIENT) and KEY_TAKEN, whose r_hold_id / r_order_id are the holder's. A retry
-- under the same hold id is EXISTS as before (the caller compares the request). 0005's and
-- 0007's functions stay for a ledger_svc of the previous version during a rolling upgrade.
CREATE FUNCTION ledger.place_hold_keyed(
    p_hold_id text, p_account_id text, p_order_id text, p_asset text, p_amount numeric, p_client_key text)
RETURNS TABLE (r_outcome text, r_available numeric, r_hold_id text, r_account_id text, r_order_id text,
               r_asset text, r_amount numeric, r_captured numeric, r_released numeric, r_status text,
               r_created_at timestamptz, r_resolved_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    h ledger.holds%ROWTYPE;
    v_book bigint;
BEGIN
    PERFORM ledger.lock_accounts(ARRAY[p_account_id]);
    SELECT * INTO h FROM ledger.holds WHERE hold_id = p_hold_id;
    IF FOUND THEN
        r_outcome := 'EXISTS';
    ELSE
        IF p_client_key IS NOT NULL THEN  -- the account's hold that carries the key, if any
            SELECT * INTO h FROM ledger.holds WHERE account_id = p_account_id AND client_key = p_client_key;
            IF FOUND THEN
                r_outcome := 'KEY_TAKEN';
            END IF;
        END IF;
    END IF;
    IF r_outcome IS NULL THEN
        SELECT book_id INTO v_book FROM ledger.books WHERE owner = p_account_id AND asset = p_asset;
        IF v_book IS NULL THEN  -- the account never had any of this asset
            r_outcome := 'INSUFFICIENT';
            r_available := 0;
            RETURN NEXT;
            RETURN;
        END IF;
        -- The account's lock is held: no placement of this account's can commit meanwhile.
        SELECT posted - held INTO r_available FROM ledger.balances WHERE book_id = v_book FOR UPDATE;
        r_available := coalesce(r_available, 0);
        IF r_available < p_amount THEN
            r_outcome := 'INSUFFICIENT';
            RETURN NEXT;
            RETURN;
        END IF;
        INSERT INTO ledger.holds (hold_id, account_id, book_id, order_id, asset, amount, client_key)
        VALUES (p_hold_id, p_account_id, v_book, p_order_id, p_asset, p_amount, p_client_key)
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
        ELSE  -- placed meanwhile for another account (a different request): report it
            SELECT * INTO h FROM ledger.holds WHERE hold_id = p_hold_id;
            r_outcome := 'EXISTS';
        END IF;
    END IF;
    r_hold_id := h.hold_id; r_account_id := h.account_id; r_order_id := h.order_id; r_asset := h.asset;
    r_amount := h.amount; r_captured := h.captured; r_released := h.released; r_status := h.status;
    r_created_at := h.created_at; r_resolved_at := h.resolved_at;
    RETURN NEXT;
END $$;
