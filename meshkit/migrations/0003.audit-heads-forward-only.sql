-- depends: 0002.audit-append-upsert
-- A stream's head only moves forward, one event at a time, onto the event it chains to: an
-- append (audit.append) is the only change it takes. Before, the head could be set back by hand
-- (acceptance round 14: the last event of a chain deleted with the triggers off, the head moved
-- back onto the one before, and `stockmesh audit verify` said "intact"). Deleting a head is
-- refused too. (Someone who can turn the triggers off can still rewrite a chain and its head
-- consistently: the hashes have no secret. docs/architecture.md says what would close that.)
CREATE FUNCTION audit.check_head_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR NEW.stream IS DISTINCT FROM OLD.stream OR NEW.seq IS DISTINCT FROM OLD.seq + 1
       OR NEW.prev_hash IS DISTINCT FROM OLD.hash THEN
        RAISE EXCEPTION '% on audit.heads is not allowed: a chain''s head only moves forward by an append',
            TG_OP USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER heads_forward_only BEFORE UPDATE OR DELETE ON audit.heads
    FOR EACH ROW EXECUTE FUNCTION audit.check_head_change();
