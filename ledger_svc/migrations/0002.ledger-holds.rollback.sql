DELETE FROM ledger.books b WHERE b.owner = '$clearing' AND b.asset = 'USD'
   AND NOT EXISTS (SELECT 1 FROM ledger.postings p WHERE p.book_id = b.book_id);
ALTER TABLE ledger.entries DROP CONSTRAINT entries_kind_check;
ALTER TABLE ledger.entries ADD CONSTRAINT entries_kind_check
    CHECK (kind IN ('DEPOSIT', 'WITHDRAWAL', 'HOLD_CAPTURE', 'FILL', 'SETTLEMENT'));
DROP TABLE ledger.hold_captures;
DROP TABLE ledger.holds;
DROP FUNCTION ledger.check_hold_change();
