-- depends: 0001.audit-init
-- audit.append in two statements instead of four, same chain: the head is advanced by one
-- upsert (which locks the stream's head row exactly as SELECT … FOR UPDATE did, so appends to
-- one stream still queue) and keeps the hash it replaced in prev_hash, which the event row
-- needs; then the event is inserted. The hash rule is unchanged:
-- hash = sha256(prev_hash || utf8(stream || '|' || seq || '|' || event_type || '|' || payload)),
-- with prev_hash = '' for a stream's first event.

ALTER TABLE audit.heads ADD COLUMN prev_hash bytea;

CREATE OR REPLACE FUNCTION audit.append(p_stream text, p_type text, p_payload text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_seq bigint;
    v_hash bytea;
    v_prev bytea;
BEGIN
    INSERT INTO audit.heads AS h (stream, seq, hash, prev_hash)
    VALUES (p_stream, 1, sha256(convert_to(p_stream || '|1|' || p_type || '|' || p_payload, 'UTF8')), '\x'::bytea)
    ON CONFLICT (stream) DO UPDATE
        SET seq = h.seq + 1,
            hash = sha256(h.hash || convert_to(p_stream || '|' || (h.seq + 1) || '|' || p_type || '|' || p_payload,
                                               'UTF8')),
            prev_hash = h.hash
    RETURNING seq, hash, prev_hash INTO v_seq, v_hash, v_prev;
    INSERT INTO audit.events (stream, seq, event_type, payload, prev_hash, hash)
        VALUES (p_stream, v_seq, p_type, p_payload, v_prev, v_hash);
    RETURN v_seq;
END $$;
