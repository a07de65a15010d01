-- depends: 0008.ledger-journal-trims
-- One idempotency key space per account for a customer's requests. A key named one movement of
-- one kind (entries_idempotency is on (account_id, kind, idempotency_key)), so a Withdraw that
-- reused a Deposit's key was a second, new request: the key identifies one request of the
-- account, whatever its kind, and reusing it for another is ALREADY_EXISTS like reusing it with
-- another amount.
--
-- request_key is the idempotency key of an entry that a customer's request made (DEPOSIT,
-- WITHDRAWAL); its unique index holds for every kind of request at once, so two concurrent
-- requests with one key cannot both be recorded whatever path they take. Only entries written
-- from now on carry it: an existing ledger may already hold a deposit and a withdrawal under one
-- key (recorded before this rule), and those stay as they were, so the migration never fails on
-- them and rewrites no history (entries are append-only). The ledger's code path covers them:
-- under the account's lock it looks the key up among the account's requests of every kind,
-- before and after this migration, and answers with what it finds (the same request: a retry;
-- another: ALREADY_EXISTS). Adding a nullable column rewrites no rows.
ALTER TABLE ledger.entries ADD COLUMN request_key text;
CREATE UNIQUE INDEX entries_request_key ON ledger.entries (account_id, request_key)
    WHERE request_key IS NOT NULL;
