-- The audit trail: append-only, hash-chained events, shared by every service.
--
-- Events form one chain per stream (e.g. 'order:<account>' or 'ledger:<account>'), so that
-- appends for different accounts never wait on one another; each event carries the hash of
-- the previous event of its stream, and its own hash covers that, its position and its
-- content. `stockmesh audit verify` recomputes every chain and names the first broken link.
-- hash = sha256(prev_hash || utf8(stream || '|' || seq || '|' || event_type || '|' || payload))

CREATE SCHEMA IF NOT EXISTS audit;

CREATE TABLE audit.events (
    stream     text NOT NULL,
    seq        bigint NOT NULL CHECK (seq > 0),
    event_type text NOT NULL,
    payload    text NOT NULL,          -- canonical JSON, kept byte for byte
    prev_hash  bytea NOT NULL,
    hash       bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (stream, seq)
);

CREATE TABLE audit.heads (
    stream text PRIMARY KEY,
    seq    bigint NOT NULL,
    hash   bytea NOT NULL
);

CREATE FUNCTION audit.append(p_stream text, p_type text, p_payload text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    h audit.heads%ROWTYPE;
    new_hash bytea;
BEGIN
    INSERT INTO audit.heads (stream, seq, hash) VALUES (p_stream, 0, '\x'::bytea)
        ON CONFLICT (stream) DO NOTHING;
    SELECT * INTO h FROM audit.heads WHERE stream = p_stream FOR UPDATE;
    new_hash := sha256(h.hash || convert_to(p_stream || '|' || (h.seq + 1) || '|' || p_type || '|' || p_payload, 'UTF8'));
    INSERT INTO audit.events (stream, seq, event_type, payload, prev_hash, hash)
        VALUES (p_stream, h.seq + 1, p_type, p_payload, h.hash, new_hash);
    UPDATE audit.heads SET seq = h.seq + 1, hash = new_hash WHERE stream = p_stream;
    RETURN h.seq + 1;
END $$;

CREATE FUNCTION audit.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on audit.events is not allowed: the audit trail is append-only', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON audit.events
    FOR EACH ROW EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON audit.events
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
