-- The ledger: cash and shares as a double-entry ledger.
--
-- A book is one (owner, asset) account: a customer's USD or AAPL, or a system counter-account
-- such as '$external' (money that entered or left the brokerage). Every movement is a
-- journal entry whose postings sum to zero per asset, so each asset's postings sum to zero
-- over the whole ledger. Customer books keep a materialised balance (posted, held) in
-- ledger.balances, where the database itself refuses a negative available balance; system
-- books keep none (their balance is the sum of their postings), so no single counter-account
-- row becomes a lock every deposit in the country waits on.

CREATE SCHEMA IF NOT EXISTS ledger;

CREATE TABLE ledger.books (
    book_id     bigserial PRIMARY KEY,
    owner       text NOT NULL,
    asset       text NOT NULL,
    is_customer boolean NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (owner, asset)
);

CREATE TABLE ledger.balances (
    book_id  bigint PRIMARY KEY REFERENCES ledger.books (book_id),
    posted   numeric(24, 4) NOT NULL DEFAULT 0,
    held     numeric(24, 4) NOT NULL DEFAULT 0,
    CONSTRAINT held_not_negative CHECK (held >= 0),
    CONSTRAINT available_not_negative CHECK (posted - held >= 0)
);

CREATE TABLE ledger.entries (
    entry_id        uuid PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('DEPOSIT', 'WITHDRAWAL', 'HOLD_CAPTURE', 'FILL', 'SETTLEMENT')),
    account_id      text NOT NULL,
    idempotency_key text,
    amount          numeric(24, 4) NOT NULL CHECK (amount > 0),
    asset           text NOT NULL,
    reference       text,
    description     text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now()
);
-- A key identifies one movement of one kind for one account, forever.
CREATE UNIQUE INDEX entries_idempotency ON ledger.entries (account_id, kind, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE ledger.postings (
    posting_id bigserial PRIMARY KEY,
    entry_id   uuid NOT NULL REFERENCES ledger.entries (entry_id),
    book_id    bigint NOT NULL REFERENCES ledger.books (book_id),
    asset      text NOT NULL,
    amount     numeric(24, 4) NOT NULL CHECK (amount <> 0),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX postings_book ON ledger.postings (book_id, posting_id);
CREATE INDEX postings_entry ON ledger.postings (entry_id);

-- Balanced entries, enforced by the database at commit: each entry's postings sum to zero
-- per asset, and an entry has at least two postings.
CREATE FUNCTION ledger.check_entry_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    unbalanced text;
    n integer;
BEGIN
    SELECT count(*) INTO n FROM ledger.postings WHERE entry_id = NEW.entry_id;
    IF n < 2 THEN
        RAISE EXCEPTION 'journal entry % has % posting(s); a balanced entry needs two or more', NEW.entry_id, n
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT asset INTO unbalanced FROM ledger.postings
     WHERE entry_id = NEW.entry_id GROUP BY asset HAVING sum(amount) <> 0 LIMIT 1;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'journal entry % does not balance in %', NEW.entry_id, unbalanced
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER postings_balanced
    AFTER INSERT ON ledger.postings
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger.check_entry_balanced();

-- Postings and entries are history: never changed, never removed.
CREATE FUNCTION ledger.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on %.% is not allowed: the ledger is append-only', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE ON ledger.postings
    FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER entries_append_only BEFORE UPDATE OR DELETE ON ledger.entries
    FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();

-- The counter-account of deposits and withdrawals.
INSERT INTO ledger.books (owner, asset, is_customer) VALUES ('$external', 'USD', false);
