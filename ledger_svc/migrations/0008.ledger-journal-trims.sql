-- depends: 0007.ledger-account-locks
-- Trims of the execution journal (the EXECUTIONS stream on JetStream): `stockmesh journal trim
-- --before DAY` purges the executions published before a trading day once every fill traded
-- before it is settled and every service's consumer has acknowledged them. The ledger keeps
-- the executions it applied (ledger.executions) forever; the stream need not. Each trim is
-- recorded here before anything is purged, so a later reconciliation of a trimmed day knows
-- that the journal no longer holds it and checks the ledger's own records instead of calling
-- every fill of that day missing from the journal.
CREATE TABLE ledger.journal_trims (
    trim_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    before_day     date NOT NULL,       -- executions published before this trading day began
    before_seq     bigint NOT NULL,     -- the stream's messages below this sequence purged
    recorded_at    timestamptz NOT NULL DEFAULT now()
);
