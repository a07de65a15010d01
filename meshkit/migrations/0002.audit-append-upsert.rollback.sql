CREATE OR REPLACE FUNCTION audit.append(p_stream text, p_type text, p_payload text) RETURNS bigint
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

ALTER TABLE audit.heads DROP COLUMN prev_hash;
