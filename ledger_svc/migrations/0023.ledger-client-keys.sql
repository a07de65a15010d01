-- depends: 0022.ledger-hold-fill-totals-only-grow
-- The client keys (order_svc's client_order_ids) of an account that no hold carries: a
-- placement the ledger refused for want of cash or shares (no hold), an order order_svc
-- rejected before asking for any hold (RegisterClientKeys), and a replacement order (its hold
-- is made by a transfer, TransferHold's client_key). Before, 0012's check knew only the keys
-- of placements that got a hold, so the first placement that reused such an order's
-- client_order_id with other parameters placed a real hold (taking cash or shares from the
-- account's available: a concurrent order could be refused for it), and gave it back once the
-- order's insert found the id taken (round 27, F1). A row is not a hold: it holds nothing, no
-- balance, ListHolds, reaper or reconciliation reads this table.
CREATE TABLE ledger.client_keys (
    account_id text NOT NULL,
    client_key text NOT NULL,
    order_id   text NOT NULL,  -- the order the key was first asked for
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, client_key)
);

-- ledger.place_hold_keyed (0012), checking ledger.client_keys too, and keeping the key of a
-- refused placement: the same outcomes, and KEPT. KEY_TAKEN is answered as 0012 answers it when
-- a hold of the account carries the key under another hold id (r_* that hold), and also when a
-- key row names another order (r_order_id that order, r_hold_id and r_status NULL: no hold). A
-- row naming this placement's own order (order_svc's order id is uuid5(account,
-- client_order_id, request): the same request's retry) means that request was answered before
-- without a hold (refused for want of cash or shares, or rejected before any hold): with
-- p_answer_kept it is answered KEPT (r_order_id that order; nothing held, no balance read), so
-- a retry of a REJECTED order holds nothing, not even for a moment, once the account could pay
-- it (round 27, explorer 4 F1: before, it held the full amount until order_svc's record found
-- the order REJECTED and gave it back; a concurrent order could be refused for it). Without
-- p_answer_kept (order_svc asking again after KEPT, having found no order recorded: the first
-- attempt died between the key and the record; or its own re-ask after a refusal; or a caller
-- that does not know KEPT: a ledger client of the previous version) the row does not stand in
-- the way. INSUFFICIENT records the key for p_order_id (ON CONFLICT DO NOTHING: a retry's row
-- is there already). The account's lock
-- (0007) is taken first, as before: no other placement of the account reads or writes its
-- keys meanwhile. 0012's body with those additions (its two refusals folded into one): calling
-- 0012's function instead cost a batch of 200 holds ~25 % more, measured; this copy ~3 %,
-- within the noise. 0012's function stays for a ledger_svc of the previous version during a
-- rolling upgrade.
CREATE FUNCTION ledger.place_hold_keyed_v2(
    p_hold_id text, p_account_id text, p_order_id text, p_asset text, p_amount numeric, p_client_key text,
    p_answer_kept boolean)
RETURNS TABLE (r_outcome text, r_available numeric, r_hold_id text, r_account_id text, r_order_id text,
               r_asset text, r_amount numeric, r_captured numeric, r_released numeric, r_status text,
               r_created_at timestamptz, r_resolved_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    h ledger.holds%ROWTYPE;
    v_book bigint;
    v_key_order text;
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
            ELSE  -- another order's key, without a hold
                SELECT order_id INTO v_key_order FROM ledger.client_keys
                 WHERE account_id = p_account_id AND client_key = p_client_key;
                IF FOUND AND (v_key_order <> p_order_id OR p_answer_kept) THEN
                    -- another order's: KEY_TAKEN; this order's, answered before without a hold: KEPT
                    r_outcome := CASE WHEN v_key_order <> p_order_id THEN 'KEY_TAKEN' ELSE 'KEPT' END;
                    r_account_id := p_account_id; r_order_id := v_key_order;
                    RETURN NEXT;
                    RETURN;
                END IF;
            END IF;
        END IF;
    END IF;
    IF r_outcome IS NULL THEN
        SELECT book_id INTO v_book FROM ledger.books WHERE owner = p_account_id AND asset = p_asset;
        IF v_book IS NOT NULL THEN
            -- The account's lock is held: no placement of this account's can commit meanwhile.
            SELECT posted - held INTO r_available FROM ledger.balances WHERE book_id = v_book FOR UPDATE;
        END IF;
        r_available := coalesce(r_available, 0);  -- no book: the account never had any of this asset
        IF v_book IS NULL OR r_available < p_amount THEN
            r_outcome := 'INSUFFICIENT';
            IF p_client_key IS NOT NULL THEN  -- no hold will carry the key: it stays this order's
                INSERT INTO ledger.client_keys (account_id, client_key, order_id)
                VALUES (p_account_id, p_client_key, p_order_id) ON CONFLICT DO NOTHING;
            END IF;
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

-- ledger.place_holds_keyed (0019) with place_hold_keyed_v2 (p_answer_kept: each hold's
-- p_answer_kept). 0019's function stays for a ledger_svc of the previous version during a
-- rolling upgrade.
CREATE FUNCTION ledger.place_holds_keyed_v2(
    p_lock_wait text, p_hold_ids text[], p_account_ids text[], p_order_ids text[], p_assets text[],
    p_amounts numeric[], p_client_keys text[], p_answer_kept boolean[])
RETURNS TABLE (r_n bigint, r_outcome text, r_available numeric, r_hold_id text, r_account_id text,
               r_order_id text, r_asset text, r_amount numeric, r_captured numeric, r_released numeric,
               r_status text, r_created_at timestamptz, r_resolved_at timestamptz)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('lock_timeout', p_lock_wait, true);
    RETURN QUERY
        SELECT i.n, r.*
          FROM unnest(p_hold_ids, p_account_ids, p_order_ids, p_assets, p_amounts, p_client_keys, p_answer_kept)
               WITH ORDINALITY AS i(hold_id, account_id, order_id, asset, amount, client_key, answer_kept, n)
         CROSS JOIN LATERAL ledger.place_hold_keyed_v2(i.hold_id, i.account_id, i.order_id, i.asset, i.amount,
                                                       i.client_key, coalesce(i.answer_kept, false)) AS r
         ORDER BY i.n;
END $$;

-- ledger.register_client_keys: the keys of orders that will have no hold of their own now (an
-- order rejected before its hold, a replacement), each for its order, in the order given,
-- after taking all their accounts (0007's order), waiting at most p_lock_wait for any lock.
-- Answers, per key (r_n its 1-based place), the account's holder of the key when it is
-- another order: a hold that carries it (r_hold_id, r_order_id, r_status) or a key row
-- (r_order_id); else records the key for p_order_id (nothing when recorded before, or when a
-- hold of this very order carries it) and answers r_order_id NULL.
CREATE FUNCTION ledger.register_client_keys(
    p_lock_wait text, p_account_ids text[], p_client_keys text[], p_order_ids text[])
RETURNS TABLE (r_n bigint, r_hold_id text, r_order_id text, r_status text)
LANGUAGE plpgsql AS $$
DECLARE
    k record;
BEGIN
    PERFORM set_config('lock_timeout', p_lock_wait, true);
    PERFORM ledger.lock_accounts(p_account_ids);
    FOR k IN SELECT i.account_id, i.client_key, i.order_id, i.n
               FROM unnest(p_account_ids, p_client_keys, p_order_ids) WITH ORDINALITY AS i(account_id, client_key, order_id, n)
              ORDER BY i.n LOOP
        r_n := k.n; r_hold_id := NULL; r_order_id := NULL; r_status := NULL;
        SELECT h.hold_id, h.order_id, h.status INTO r_hold_id, r_order_id, r_status
          FROM ledger.holds h WHERE h.account_id = k.account_id AND h.client_key = k.client_key;
        IF NOT FOUND THEN
            SELECT c.order_id INTO r_order_id FROM ledger.client_keys c
             WHERE c.account_id = k.account_id AND c.client_key = k.client_key;
            IF NOT FOUND THEN
                INSERT INTO ledger.client_keys (account_id, client_key, order_id)
                VALUES (k.account_id, k.client_key, k.order_id);
            END IF;
        END IF;
        IF r_order_id = k.order_id THEN  -- this order's own key
            r_hold_id := NULL; r_order_id := NULL; r_status := NULL;
        END IF;
        RETURN NEXT;
    END LOOP;
END $$;
