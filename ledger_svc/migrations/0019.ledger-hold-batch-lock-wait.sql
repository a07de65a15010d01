-- depends: 0018.ledger-execution-leaves-indexes
-- A batch of holds (order_svc's PlaceHolds: the holds of many accounts' placements in one
-- statement) waits at most p_lock_wait for any lock it needs, then fails as a whole with
-- lock_not_available (SQLSTATE 55P03) and changes nothing. Before, one account whose lock
-- was held long (a stuck transaction, a session stopped mid-statement, a row locked by hand)
-- held back every account's placements behind it: the batch waited for the lock, and the next
-- batches for the batch (round 18's chaos tester: every placement failed for 42 s; a row locked
-- from psql for 30 s made other accounts' placements take 4-14 s). ledger_svc then places the
-- batch's holds one at a time with the same limit and answers the busy account's UNAVAILABLE
-- ACCOUNT_BUSY (ledger_svc.service_layer.handlers.place_holds).
--
-- ledger.place_holds_keyed: 0012's place_hold_keyed for each hold of the arrays, one after the
-- other in the order given, with lock_timeout = p_lock_wait (a PostgreSQL interval text such
-- as '1000ms') for the statement's own transaction only (set_config's is_local). r_n is the
-- hold's place in the arrays (1-based). 0012's function stays for a ledger_svc of the previous
-- version during a rolling upgrade.
CREATE FUNCTION ledger.place_holds_keyed(
    p_lock_wait text, p_hold_ids text[], p_account_ids text[], p_order_ids text[], p_assets text[],
    p_amounts numeric[], p_client_keys text[])
RETURNS TABLE (r_n bigint, r_outcome text, r_available numeric, r_hold_id text, r_account_id text,
               r_order_id text, r_asset text, r_amount numeric, r_captured numeric, r_released numeric,
               r_status text, r_created_at timestamptz, r_resolved_at timestamptz)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('lock_timeout', p_lock_wait, true);
    RETURN QUERY
        SELECT i.n, r.*
          FROM unnest(p_hold_ids, p_account_ids, p_order_ids, p_assets, p_amounts, p_client_keys)
               WITH ORDINALITY AS i(hold_id, account_id, order_id, asset, amount, client_key, n)
         CROSS JOIN LATERAL ledger.place_hold_keyed(i.hold_id, i.account_id, i.order_id, i.asset, i.amount,
                                                    i.client_key) AS r
         ORDER BY i.n;
END $$;
