DROP TRIGGER IF EXISTS heads_forward_only ON audit.heads;
DROP FUNCTION IF EXISTS audit.check_head_change();
