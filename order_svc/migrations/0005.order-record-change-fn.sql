-- depends: 0004.order-replaces
-- One change of an order as one database call: its audit event, its OrderUpdate with the
-- account's next sequence (gapless: taken in the caller's transaction) and the notification
-- to live streams. What OrderRepository.record_change did in four round trips; the rules are
-- unchanged. Returns the sequence.
CREATE FUNCTION orders.record_change(
    p_account_id text, p_order_id uuid, p_status text, p_filled_quantity bigint, p_fill_notional numeric,
    p_reject_reason text, p_reject_message text, p_replaced_by uuid, p_updated_at timestamptz,
    p_fill_id text, p_fill_price numeric, p_fill_quantity bigint, p_executed_at timestamptz,
    p_audit_type text, p_audit_payload text, p_channel text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_seq bigint;
BEGIN
    PERFORM audit.append('order:' || p_account_id, p_audit_type, p_audit_payload);
    INSERT INTO orders.account_sequences AS s (account_id, last_sequence) VALUES (p_account_id, 1)
    ON CONFLICT (account_id) DO UPDATE SET last_sequence = s.last_sequence + 1
    RETURNING last_sequence INTO v_seq;
    INSERT INTO orders.updates (account_id, sequence, order_id, status, filled_quantity, fill_notional,
                                reject_reason, reject_message, replaced_by, updated_at, fill_id, fill_price,
                                fill_quantity, executed_at)
    VALUES (p_account_id, v_seq, p_order_id, p_status, p_filled_quantity, p_fill_notional, p_reject_reason,
            p_reject_message, p_replaced_by, p_updated_at, p_fill_id, p_fill_price, p_fill_quantity, p_executed_at);
    PERFORM pg_notify(p_channel, p_account_id);
    RETURN v_seq;
END $$;
