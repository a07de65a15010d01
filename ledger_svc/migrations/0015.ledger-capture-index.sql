-- depends: 0014.ledger-unsettled-forward-only
-- transactional: false
-- Captures by their id (a fill's `<fill>:cash`), for settlement to check each proceeds row
-- against what the fill's buyer paid into clearing (0014). Built CONCURRENTLY, as 0013: the
-- ledger goes on taking captures while it builds; run again after a failed build, it starts
-- anew.
DROP INDEX CONCURRENTLY IF EXISTS ledger.hold_captures_capture;
CREATE INDEX CONCURRENTLY hold_captures_capture ON ledger.hold_captures (capture_id);
