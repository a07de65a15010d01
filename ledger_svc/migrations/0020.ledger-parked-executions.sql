-- depends: 0019.ledger-hold-batch-lock-wait
-- Executions the ledger's consumer could not apply because an account they touch was held by
-- another transaction for longer than the consumer waits (a stuck transaction, a session
-- stopped mid-statement, a row locked by hand): parked here, in stream order (seq), with the
-- accounts they touch, so that the symbol's other executions go on (round 19's lock tester: one
-- held account stopped its symbols' executions for every account, and an innocent account's
-- sale of shares it had just bought was refused). Each symbol's executions touching a parked
-- account are parked behind it, so each account's executions still apply in stream order; a
-- background loop applies them, in order, once their accounts are free, and deletes each row in
-- the transaction that applies it. A row exists only while its execution is not applied.
CREATE TABLE ledger.parked_executions (
    seq          bigserial PRIMARY KEY,
    symbol       text NOT NULL,
    execution_id text NOT NULL UNIQUE,
    accounts     text[] NOT NULL,
    execution    jsonb NOT NULL,
    parked_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX parked_executions_symbol ON ledger.parked_executions (symbol, seq);
