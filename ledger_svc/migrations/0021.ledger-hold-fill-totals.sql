-- depends: 0020.ledger-parked-executions
-- transactional: false
-- GetPortfolio lists the orders the account's holds are open for with the fills the ledger has
-- applied to each, in the snapshot of its cash and positions (adapters/settlement.py HOLDINGS).
-- Summed from ledger.executions on every call, a market maker's portfolio read its open orders'
-- whole resting history and walked every replace chain back to its start (round 26 review: 300
-- open orders with 50,000 fills, 220-330 ms; one order replaced 5,000 times, ~230 ms). Each
-- hold now keeps its order's fills applied against it, `filled` (shares) and `notional`
-- (Σ price × quantity, exact), written by the statement that saves the fill's capture of it
-- (Hold.count_fill), and a replace's new hold starts with the replaced hold's (FIX's CumQty).
--
-- Columns with a constant default: no table rewrite (PostgreSQL 11 and later). The holds still
-- PENDING get their totals once here, from the journal and the completed transfers (as
-- HOLDINGS summed them before); the resolved ones are history (never listed, and their rows
-- refuse every change). Their fills are gathered first (one read of the journal, a seq scan for
-- the resting side, no index of its own) and then written, so the holds' rows are locked only
-- while written. A fill applied by a ledger of the previous release after this (a rolling
-- upgrade, until its pods stop) is not counted: that order's listed filled_quantity stays short
-- by it until the order ends (its cash and shares are exact; only the listing reads these).
-- One of this release (its pods may start once the columns exist; or this run again, after a
-- failed index build) is: each hold gets the fills its totals lacked when the journal was read
-- (the journal's less the totals then), added to its totals as they are when written, never
-- the journal's sum written over a fill counted meanwhile (review of round 26: a fill applied
-- while the backfill waited for its hold's row was lost).
--
-- (0021 first indexed every resting fill here, and dropped 0018's executions_filling_counter,
-- HOLD_OPEN's lookup: a database that applied that version gets the index back, and loses the
-- other.)
ALTER TABLE ledger.holds ADD COLUMN IF NOT EXISTS filled bigint NOT NULL DEFAULT 0,
                         ADD COLUMN IF NOT EXISTS notional numeric(28, 4) NOT NULL DEFAULT 0;
WITH RECURSIVE chain (hold_id, account_id, member) AS (
    SELECT hold_id, account_id, hold_id FROM ledger.holds WHERE status = 'PENDING'
    UNION
    SELECT c.hold_id, c.account_id, t.from_hold_id FROM chain c
      JOIN ledger.hold_transfers t ON t.to_hold_id = c.member AND t.status = 'COMPLETED'
), fills AS MATERIALIZED (
    SELECT hold_id, sum(quantity) AS filled, sum(price * quantity) AS notional
      FROM (SELECT c.hold_id, e.quantity, e.price FROM chain c
              JOIN ledger.executions e ON e.order_id = c.member AND e.account_id = c.account_id
             WHERE e.type = 'FILL'
            UNION ALL
            SELECT c.hold_id, e.quantity, e.price FROM chain c
              JOIN ledger.executions e ON e.counter_order_id = c.member AND e.counter_account_id = c.account_id
             WHERE e.type = 'FILL') f
     GROUP BY hold_id
), missing AS MATERIALIZED (
    SELECT f.hold_id, f.filled - h.filled AS filled, f.notional - h.notional AS notional
      FROM fills f JOIN ledger.holds h USING (hold_id)
)
UPDATE ledger.holds h SET filled = h.filled + m.filled, notional = h.notional + m.notional
  FROM missing m
 WHERE h.hold_id = m.hold_id AND h.status = 'PENDING' AND (m.filled, m.notional) <> (0, 0);
DROP INDEX CONCURRENTLY IF EXISTS ledger.executions_by_counter_order;
CREATE INDEX CONCURRENTLY IF NOT EXISTS executions_filling_counter ON ledger.executions (counter_order_id)
    WHERE type = 'FILL' AND counter_leaves = 0;
