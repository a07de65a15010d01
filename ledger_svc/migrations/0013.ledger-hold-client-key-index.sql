-- depends: 0012.ledger-hold-client-key
-- transactional: false
-- The unique index behind holds.client_key (0012), built CONCURRENTLY so that a ledger with
-- many holds goes on taking them while it builds (CONCURRENTLY cannot run in a transaction,
-- hence the directive above). Run again after a build that failed half-way (which leaves the
-- index INVALID), it drops the index and builds it anew.
DROP INDEX CONCURRENTLY IF EXISTS ledger.holds_client_key;
CREATE UNIQUE INDEX CONCURRENTLY holds_client_key ON ledger.holds (account_id, client_key)
 WHERE client_key IS NOT NULL;
