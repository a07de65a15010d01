-- depends: 0010.ledger-hold-transfers-from
-- The account's statement (ListActivities) shows a sale's proceeds when the sale is made, not
-- when it settles: GetPortfolio's cash total counts them from then on (as unsettled), so the
-- statement's USD amounts add up to the cash total at every moment. The proceeds are not a
-- posting until settlement (clearing owes them until then), so each unsettled row is itself a
-- line of the seller's statement: `activity_id` is taken from the postings' sequence, so the
-- lines of both kinds page in one order (the page token is the last line's id), with its
-- description ('3 SIRI at 0.8936', as the fill's own entries) and when it was recorded. The
-- settlement of a fill listed this way is not listed again (it moves nothing the statement
-- has not counted). Rows from before this migration keep no activity id: they are not listed,
-- and their settlement is, as before.
ALTER TABLE ledger.unsettled
    ADD COLUMN activity_id bigint,
    ADD COLUMN description text,
    ADD COLUMN created_at  timestamptz;
ALTER TABLE ledger.unsettled
    ALTER COLUMN activity_id SET DEFAULT nextval('ledger.postings_posting_id_seq'),
    ALTER COLUMN created_at SET DEFAULT now();
CREATE INDEX unsettled_statement ON ledger.unsettled (account_id, activity_id) WHERE activity_id IS NOT NULL;
