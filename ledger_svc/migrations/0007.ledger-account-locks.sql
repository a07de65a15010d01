-- depends: 0006.ledger-hold-order-check
-- One order of locking for every ledger transaction, so none waits for another in a cycle (a
-- deadlock costs PostgreSQL's deadlock_timeout, a second, before one of them is undone): a
-- transaction first locks each account it will touch, in account order (the account's audit
-- head, 'ledger:<account>', which every movement of the account appends to anyway), and only
-- then that account's holds and balance rows. Before, a batch of holds locked a book's balance
-- row and then the account's head, account after account, while a fill locked the buyer's rows
-- and head, then the seller's, then the buyer's again: the two deadlocked under trading load.
--
-- ledger.lock_accounts(accounts): the heads of the given accounts, in byte order (COLLATE "C",
-- as Python sorts), created if missing; a lock already held is taken again at no cost.

CREATE FUNCTION ledger.lock_accounts(p_accounts text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    s text;
BEGIN
    FOR s IN SELECT DISTINCT 'ledger:' || a COLLATE "C" FROM unnest(p_accounts) a ORDER BY 1 LOOP
        PERFORM 1 FROM audit.heads WHERE stream = s FOR UPDATE;
        IF NOT FOUND THEN  -- the account's first movement: its head, empty (audit.append's start)
            INSERT INTO audit.heads (stream, seq, hash) VALUES (s, 0, '\x'::bytea) ON CONFLICT (stream) DO NOTHING;
            PERFORM 1 FROM audit.heads WHERE stream = s FOR UPDATE;
        END IF;
    END LOOP;
END $$;

-- ledger.place_hold (0005), after taking its account: a batch of holds comes sorted by account,
-- so it takes its accounts in account order, each before its book's balance row.
CREATE FUNCTION ledger.place_hold_account_first(
    p_hold_id text, p_account_id text, p_order_id text, p_asset text, p_amount numeric)
RETURNS TABLE (r_outcome text, r_available numeric, r_hold_id text, r_account_id text, r_order_id text,
               r_asset text, r_amount numeric, r_captured numeric, r_released numeric, r_status text,
               r_created_at timestamptz, r_resolved_at timestamptz)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ledger.lock_accounts(ARRAY[p_account_id]);
    RETURN QUERY SELECT * FROM ledger.place_hold(p_hold_id, p_account_id, p_order_id, p_asset, p_amount);
END $$;
