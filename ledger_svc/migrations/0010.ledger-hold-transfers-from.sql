-- depends: 0009.ledger-request-keys
-- ListHolds shows a hold that a replace moved to the new order's hold as TRANSFERRED (with the
-- hold it went to) rather than RELEASED: it finds the completed transfer from each hold by
-- its from_hold_id (a reserve hold's transfer by its to_hold_id, the primary key).
CREATE INDEX hold_transfers_from ON ledger.hold_transfers (from_hold_id);
