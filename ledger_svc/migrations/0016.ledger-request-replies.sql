-- depends: 0015.ledger-capture-index
-- A customer's cash request (Deposit, Withdraw) answers the balance right after it. A retry with
-- the same idempotency key answered the balance at the time of the retry (acceptance round 15:
-- a deposit retried after another deposit answered both), not what the request answered.
-- That answer is now kept, one row per request, written in the request's own transaction, and a
-- retry answers it. Requests recorded before this migration have none; their retries answer
-- the balance now, as before.
CREATE TABLE ledger.request_replies (
    account_id  text NOT NULL,
    request_key text NOT NULL,
    kind        text NOT NULL,  -- the entry's (DEPOSIT, WITHDRAWAL): a ledger from before 0009 may hold both under one key
    total       numeric NOT NULL,
    available   numeric NOT NULL,
    held        numeric NOT NULL,
    settled     numeric NOT NULL,
    unsettled   numeric NOT NULL,
    PRIMARY KEY (account_id, request_key, kind)
);
