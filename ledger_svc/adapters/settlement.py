"""The SQL of settlement: the execution journal, positions and unsettled proceeds."""
from __future__ import annotations

import json
import uuid
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Collection, NamedTuple

import asyncpg

from ledger_svc.domain.model import CASH, CLEARING
from ledger_svc.domain.settlement import Execution, Position
from meshkit.db import lock_wait_text, sets_lock_wait
from meshkit.executions import accounts, to_json


# A fill moves cash unless price × quantity is less than a cent (domain.settlement.fill_cash:
# rounded down to the cent). Fills applied before the rounding always moved some.
_MOVES_CASH = "trunc(price * quantity, 2) > 0"

# The proceeds due through day $1 (SettlementRepository.due and count_due).
_DUE = """
      FROM ledger.unsettled u
     WHERE u.settled_at IS NULL AND u.trade_date <= $1
       AND EXISTS (SELECT 1 FROM ledger.hold_captures c
                    WHERE c.capture_id = u.fill_id || ':cash' AND c.amount = u.amount)
"""


# claim_executions' deletion of the claimed executions' parked rows, when it unparks them (the
# consumer's claims, on the fills' path, carry no such statement).
_UNPARKED = """, unparked AS (
                DELETE FROM ledger.parked_executions WHERE execution_id = ANY($1::text[])
            )"""


# SettlementRepository.holdings: the statement of a portfolio's snapshot ($1 the account, $2 its
# cash asset).
HOLDINGS = """
    WITH orders AS (
        -- The open holds' orders, found through the account's books and the index of pending
        -- holds, not the account's history; with the fills each hold has counted (migration
        -- 0021: its own, and by its transfer those of the orders it replaced), not summed from
        -- the journal: the statement's work does not grow with an order's fills or replaces
        -- (round 26 review). A replace the ledger has not applied yet (its transfer PENDING) is
        -- its new order's: the old order's hold and the reserve together, with the old order's
        -- fills, which the transfer will carry; the old order is not listed beside it (round 26
        -- explorer: both were, their remaining quantities adding up to more than was held).
        SELECT order_id, sum(filled) AS filled, sum(notional) AS notional, max(hold_seq) AS newest,
               bool_or(moving) OR EXISTS (SELECT 1 FROM ledger.hold_transfers r
                                           WHERE r.to_hold_id = held.order_id AND r.status = 'PENDING') AS replacing
          FROM (SELECT coalesce(t.to_hold_id, h.order_id) AS order_id, h.filled, h.notional, h.hold_seq,
                       t.to_hold_id IS NOT NULL AS moving
                  FROM ledger.books k JOIN ledger.holds h USING (book_id)
                  LEFT JOIN ledger.hold_transfers t ON t.from_hold_id = h.hold_id AND t.status = 'PENDING'
                 WHERE k.owner = $1 AND h.status = 'PENDING') held
         GROUP BY order_id
    )
    SELECT c.posted, c.held, c.unsettled, o.held_orders, o.filled, o.notional, o.replacing,
           p.symbol, p.shares, p.shares_held, p.cost, p.qty
      FROM (SELECT coalesce(b.posted, 0) AS posted, coalesce(b.held, 0) AS held,
                   coalesce((SELECT sum(amount) FROM ledger.unsettled
                              WHERE account_id = $1 AND settled_at IS NULL), 0) AS unsettled
              FROM (SELECT 1) one
              LEFT JOIN (ledger.books k JOIN ledger.balances b USING (book_id))
                     ON k.owner = $1 AND k.asset = $2) c
     CROSS JOIN (SELECT coalesce(array_agg(order_id ORDER BY newest DESC), '{}') AS held_orders,
                        coalesce(array_agg(filled ORDER BY newest DESC), '{}') AS filled,
                        coalesce(array_agg(notional ORDER BY newest DESC), '{}') AS notional,
                        coalesce(array_agg(replacing ORDER BY newest DESC), '{}') AS replacing
                   FROM orders) o
      LEFT JOIN LATERAL (
            SELECT k.asset AS symbol, b.posted AS shares, b.held AS shares_held,
                   coalesce(p.cost, 0) AS cost, coalesce(p.quantity, 0) AS qty
              FROM ledger.books k JOIN ledger.balances b USING (book_id)
              LEFT JOIN ledger.positions p ON p.account_id = k.owner AND p.symbol = k.asset
             WHERE k.owner = $1 AND k.asset <> $2 AND (b.posted <> 0 OR b.held <> 0)) p ON true
     ORDER BY p.symbol
    """


class Claim(NamedTuple):
    ids: set[str]  # the executions' ids claimed: not applied before
    parked: set[str]  # the accounts of their symbol's parked executions, when asked (parked_here)


class SettlementRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def claim_execution(self, ex: Execution, lock_wait: float | None = None) -> bool:
        """Record the execution; False when it was applied before (a repeat, dropped by id).
        `lock_wait`: as claim_executions."""
        return bool((await self.claim_executions([ex], lock_wait=lock_wait)).ids)

    async def claim_executions(self, exs: list[Execution], *, lock_wait: float | None = None,
                               parked_here: Collection[str] | None = None, unpark: bool = False) -> Claim:
        """claim_execution of many in one statement: the ids not applied before.

        With `lock_wait`, no statement of the transaction, this one included, waits longer for
        a lock (lock_timeout, set by this statement before it inserts anything: no round trip
        of its own). With `parked_here`, none is claimed when one of them touches an account
        that a parked execution of their symbol touches (Claim.parked: every such account of
        the symbol), so that the caller parks it behind; the parked executions of these ids
        (those the caller's batch parked: it keeps them in stream order with its own) are left
        out. Read in the statement that claims, so no execution parked (by this consumer, or
        one that had the symbol before) or unparked (by the elected replica's unpark, which
        deletes its row in the transaction that applies it) before the statement began is
        missed, and without a round trip of its own. With `unpark`, their parked rows are
        deleted by the same statement (applied, or applied before: the caller commits either way)."""
        rows = [(ex.execution_id, ex.symbol, ex.type, ex.order_id, ex.account_id, ex.counter_order_id,
                 ex.counter_account_id, ex.side, ex.price, ex.quantity, ex.trade_date, ex.executed_at, ex.leaves,
                 ex.counter_leaves if ex.counter_order_id else None) for ex in exs]
        row = await self.conn.fetchrow(
            f"""
            WITH parked AS (
                SELECT coalesce(array_agg(DISTINCT a), '{{}}') AS accounts
                  FROM ledger.parked_executions p CROSS JOIN LATERAL unnest(p.accounts) AS a
                 WHERE p.symbol = ANY($15::text[]) AND p.execution_id <> ALL($18::text[])
            ){_UNPARKED if unpark else ""}, claimed AS (
                INSERT INTO ledger.executions (execution_id, symbol, type, order_id, account_id, counter_order_id,
                                               counter_account_id, side, price, quantity, trade_date, executed_at,
                                               leaves, counter_leaves)
                SELECT e.* FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                       $7::text[], $8::text[], $9::numeric[], $10::bigint[], $11::date[],
                                       $12::timestamptz[], $13::bigint[], $14::bigint[]) AS e, parked
                 WHERE NOT (parked.accounts && $16::text[])
                   AND CASE WHEN $17::text IS NULL THEN true ELSE {sets_lock_wait("$17")} END
                ON CONFLICT (execution_id) DO NOTHING RETURNING execution_id
            )
            SELECT array(SELECT execution_id FROM claimed) AS ids, (SELECT accounts FROM parked) AS parked
            """, *(list(c) for c in zip(*rows)),
            sorted({ex.symbol for ex in exs}) if parked_here is not None else [],
            sorted({a for ex in exs for a in accounts(ex)}), None if lock_wait is None else lock_wait_text(lock_wait),
            sorted(parked_here or ()))
        return Claim(set(row["ids"]), set(row["parked"]))

    async def lock_positions(self, keys: set[tuple[str, str]]) -> dict[tuple[str, str], Position]:
        """The positions of these (account, symbol), locked in that order, in one statement; a
        position not held yet is an empty one."""
        ordered = sorted(keys)
        rows = await self.conn.fetch(
            """
            SELECT p.account_id, p.symbol, p.quantity, p.cost FROM ledger.positions p
              JOIN unnest($1::text[], $2::text[]) AS k(account_id, symbol) USING (account_id, symbol)
             ORDER BY p.account_id, p.symbol FOR UPDATE OF p
            """, [k[0] for k in ordered], [k[1] for k in ordered])
        found = {(r["account_id"], r["symbol"]): Position(r["quantity"], r["cost"]) for r in rows}
        return {k: found.get(k) or Position() for k in ordered}

    async def save_positions(self, positions: dict[tuple[str, str], Position]) -> None:
        """save_position of many in one statement."""
        keys = sorted(positions)
        await self.conn.execute(
            """
            INSERT INTO ledger.positions (account_id, symbol, quantity, cost)
            SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::numeric[])
            ON CONFLICT (account_id, symbol) DO UPDATE SET quantity = excluded.quantity, cost = excluded.cost
            """, [k[0] for k in keys], [k[1] for k in keys], [positions[k].quantity for k in keys],
            [positions[k].cost for k in keys])

    async def add_unsettled_many(self, rows: list[tuple[int, str, str, Decimal, date, str]]) -> None:
        """add_unsettled of many (activity_id, fill_id, account_id, amount, trade_date,
        description): each with its statement line's id drawn from the postings' sequence."""
        await self.conn.execute(
            "INSERT INTO ledger.unsettled (activity_id, fill_id, account_id, amount, trade_date, description) "
            "SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::numeric[], $5::date[], $6::text[])",
            *(list(c) for c in zip(*rows)))

    # --- executions parked behind a held account (migration 0020) ---------------------------

    async def park(self, exs: list[Execution]) -> None:
        """Park these executions, in the order given (after any parked before); one parked
        already is left where it is."""
        await self.conn.executemany(
            "INSERT INTO ledger.parked_executions (symbol, execution_id, accounts, execution) "
            "VALUES ($1, $2, $3, $4::jsonb) ON CONFLICT (execution_id) DO NOTHING",
            [(ex.symbol, ex.execution_id, sorted(accounts(ex)), json.dumps(to_json(ex))) for ex in exs])

    async def parked(self, symbol: str | None = None) -> list[tuple[int, str, str, frozenset[str], datetime]]:
        """Every parked execution (of `symbol`, when given) as (seq, symbol, execution id, its
        accounts, when parked), oldest first: what unpark needs to choose which to try, without
        reading (or decoding) the executions."""
        return [(r["seq"], r["symbol"], r["execution_id"], frozenset(r["accounts"]), r["parked_at"])
                for r in await self.conn.fetch(
                    "SELECT seq, symbol, execution_id, accounts, parked_at FROM ledger.parked_executions "
                    + ("ORDER BY seq" if symbol is None else "WHERE symbol = $1 ORDER BY seq"),
                    *([] if symbol is None else [symbol]))]

    async def parked_executions(self, seqs: list[int]) -> dict[int, str]:
        """The parked executions `seqs` still parked, as stored (JSON text: the caller decodes
        each alone, so one that cannot be decoded holds back only its own accounts)."""
        return {r["seq"]: r["execution"] for r in await self.conn.fetch(
            "SELECT seq, execution::text FROM ledger.parked_executions WHERE seq = ANY($1::bigint[])", seqs)}

    async def position(self, account_id: str, symbol: str) -> Position:
        row = await self.conn.fetchrow(
            "SELECT quantity, cost FROM ledger.positions WHERE account_id = $1 AND symbol = $2 FOR UPDATE",
            account_id, symbol)
        return Position() if row is None else Position(row["quantity"], row["cost"])

    async def save_position(self, account_id: str, symbol: str, p: Position) -> None:
        await self.conn.execute(
            """
            INSERT INTO ledger.positions (account_id, symbol, quantity, cost) VALUES ($1, $2, $3, $4)
            ON CONFLICT (account_id, symbol) DO UPDATE SET quantity = excluded.quantity, cost = excluded.cost
            """, account_id, symbol, p.quantity, p.cost)

    async def holdings(self, account_id: str, cash_asset: str) -> list[asyncpg.Record]:
        """The account's cash (posted, held, unsettled), every share book with its cost basis,
        and the orders its holds are still open for, in one statement, so all come from one
        snapshot (a fill committed in between cannot show its cash without its shares, nor an
        order's fills without the cash and shares they moved). One row per position (symbol,
        shares, held shares, cost, qty), each carrying the cash columns and the open orders
        (`held_orders`, with `filled` and `notional`, Σ price × quantity, of the fills the ledger
        has applied to each, its replaced orders' included, and `replacing`: a replacement whose
        replace the ledger has not applied, its hold a reserve), the newest hold's first (a
        portfolio lists the newest PAGE of them); one row with a NULL symbol when there is no
        position."""
        return await self.conn.fetch(HOLDINGS, account_id, cash_asset)

    async def add_unsettled(self, fill_id: str, account_id: str, amount: Decimal, trade_date: date,
                            description: str) -> None:
        """The seller's proceeds, owed until settlement; also a line of the seller's statement
        (its activity id from the postings' sequence: migration 0011)."""
        await self.conn.execute(
            "INSERT INTO ledger.unsettled (fill_id, account_id, amount, trade_date, description)"
            " VALUES ($1, $2, $3, $4, $5)", fill_id, account_id, amount, trade_date, description)

    async def due(self, through: date, limit: int, *, passed: Collection[str] = (),
                  only: Collection[str] | None = None, lock: bool = True) -> list[asyncpg.Record]:
        """Proceeds to settle: only those whose amount is what the fill's buyer paid into
        clearing (its `<fill>:cash` capture); the others stay unpaid, and reconciliation names
        them (proceeds_off_their_fill). Not the fills `passed` (those that could not settle);
        with `only`, among those fills alone. Locked (those another settlement has locked
        skipped), unless `lock` is False."""
        return await self.conn.fetch(
            f"SELECT u.fill_id, u.account_id, u.amount {_DUE}"
            " AND NOT (u.fill_id = ANY($3::text[])) AND ($4::text[] IS NULL OR u.fill_id = ANY($4::text[]))"
            " ORDER BY u.trade_date, u.fill_id LIMIT $2" + (" FOR UPDATE OF u SKIP LOCKED" if lock else ""),
            through, limit, list(passed), None if only is None else list(only))

    async def count_due(self, through: date) -> int:
        """How many proceeds `due` has to give, in all (a settlement's progress: N of this)."""
        return await self.conn.fetchval(f"SELECT count(*) {_DUE}", through)

    async def proceeds_off_their_fill(self) -> list[asyncpg.Record]:
        """Proceeds not settled yet whose amount is not what the fill's buyer paid into
        clearing (or that no capture paid at all): never paid out (due)."""
        return await self.conn.fetch(
            """
            SELECT u.fill_id, u.account_id, u.amount, c.amount AS paid
              FROM ledger.unsettled u
              LEFT JOIN ledger.hold_captures c ON c.capture_id = u.fill_id || ':cash'
             WHERE u.settled_at IS NULL AND c.amount IS DISTINCT FROM u.amount
             ORDER BY u.fill_id
            """)

    async def mark_settled(self, settled: list[tuple[str, uuid.UUID]]) -> None:
        """Each (fill_id, the entry that settled it), in one statement."""
        await self.conn.execute(
            "UPDATE ledger.unsettled u SET settled_at = now(), settle_entry = v.entry_id"
            "  FROM unnest($1::text[], $2::uuid[]) AS v(fill_id, entry_id) WHERE u.fill_id = v.fill_id",
            [f for f, _ in settled], [e for _, e in settled])

    async def count_settled(self, through: date) -> int:
        return await self.conn.fetchval(
            "SELECT count(*) FROM ledger.unsettled WHERE settled_at IS NOT NULL AND trade_date <= $1", through)

    async def unsettled_before(self, day: date) -> tuple[int, date | None]:
        """How many applied fills traded before `day` are not settled yet, and the earliest
        trading day among them."""
        row = await self.conn.fetchrow(
            "SELECT count(*) AS n, min(trade_date) AS first FROM ledger.unsettled"
            " WHERE settled_at IS NULL AND trade_date < $1", day)
        return row["n"], row["first"]

    # --- the execution journal's trims ----------------------------------------------------

    async def record_trim(self, before_day: date, before_seq: int) -> None:
        await self.conn.execute(
            "INSERT INTO ledger.journal_trims (before_day, before_seq) VALUES ($1, $2)", before_day, before_seq)

    async def trimmed_before(self) -> date | None:
        """The latest trading day before which the journal has been (or is being) trimmed."""
        return await self.conn.fetchval("SELECT max(before_day) FROM ledger.journal_trims")

    # --- reconciliation -------------------------------------------------------------------

    async def fills_not_settled(self, day: date) -> list[asyncpg.Record]:
        return await self.conn.fetch(
            """
            SELECT e.execution_id, u.settled_at FROM ledger.executions e
              LEFT JOIN ledger.unsettled u ON u.fill_id = e.execution_id
             WHERE e.type = 'FILL' AND e.trade_date = $1 AND u.settled_at IS NULL AND {MOVES_CASH}
            """.format(MOVES_CASH=_MOVES_CASH), day)

    async def pending_holds_of_ended_orders(self) -> list[asyncpg.Record]:
        """Holds still pending whose order has ended: the engine ended it (cancelled, expired,
        rejected, replaced), or a fill did (nothing left of it, on either side of the fill:
        migration 0017); and the reserve of a replace whose transfer was decided (completed or
        cancelled, the reserve released with it)."""
        return await self.conn.fetch(
            """
            SELECT h.hold_id, h.order_id, h.amount - h.captured AS left
              FROM ledger.holds h
             WHERE h.status = 'PENDING' AND (
                   EXISTS (SELECT 1 FROM ledger.executions e
                            WHERE e.order_id = h.order_id
                              AND (e.type IN ('CANCELLED', 'EXPIRED', 'REJECTED', 'REPLACED')
                                   OR (e.type = 'FILL' AND e.leaves = 0)))
                OR EXISTS (SELECT 1 FROM ledger.executions e
                            WHERE e.counter_order_id = h.order_id AND e.type = 'FILL' AND e.counter_leaves = 0)
                OR EXISTS (SELECT 1 FROM ledger.hold_transfers t
                            WHERE t.reserve_hold_id = h.hold_id AND t.status <> 'PENDING'))
            """)

    async def stale_transfers(self, older_than: timedelta) -> list[asyncpg.Record]:
        """Hold transfers (replaces) still undecided after `older_than` whose reserve is still
        held: a replace is decided in moments, so such a reserve holds the customer's cash or
        shares for nothing. (One without a reserve holds nothing: a replace abandoned before
        the engine heard of it is cancelled by order_svc's next replace of the order.)"""
        return await self.conn.fetch(
            "SELECT t.to_hold_id, t.from_hold_id, t.created_at, h.amount - h.captured AS held "
            "FROM ledger.hold_transfers t JOIN ledger.holds h ON h.hold_id = t.reserve_hold_id "
            "WHERE t.status = 'PENDING' AND h.status = 'PENDING' AND t.created_at < now() - $1::interval "
            "ORDER BY t.created_at", older_than)

    async def clearing_and_owed(self) -> tuple[Decimal, Decimal]:
        """Clearing's cash and the sale proceeds not yet settled, in one snapshot: every cent in
        clearing came from a buyer's fill and is owed to its seller until settled, so the two
        are equal."""
        row = await self.conn.fetchrow(
            f"""SELECT coalesce((SELECT sum(p.amount) FROM ledger.postings p JOIN ledger.books k USING (book_id)
                                  WHERE k.owner = '{CLEARING}' AND k.asset = '{CASH}'), 0) AS clearing,
                       coalesce((SELECT sum(amount) FROM ledger.unsettled WHERE settled_at IS NULL), 0) AS owed""")
        return row["clearing"], row["owed"]

    async def balances_off_the_books(self) -> list[asyncpg.Record]:
        """Customer books whose materialised balance (what GetPortfolio shows and a withdrawal
        checks) is not what the ledger's own records say: posted is the sum of the book's
        postings, held what its PENDING holds still reserve. One statement, one snapshot: a
        movement changes the balance and its postings or hold in one transaction."""
        return await self.conn.fetch(
            """
            SELECT k.owner, k.asset, b.posted, coalesce(p.total, 0) AS postings, b.held, coalesce(h.pending, 0) AS pending
              FROM ledger.balances b JOIN ledger.books k USING (book_id)
              LEFT JOIN (SELECT book_id, sum(amount) AS total FROM ledger.postings GROUP BY book_id) p USING (book_id)
              LEFT JOIN (SELECT book_id, sum(amount - captured - released) AS pending
                           FROM ledger.holds WHERE status = 'PENDING' GROUP BY book_id) h USING (book_id)
             WHERE b.posted <> coalesce(p.total, 0) OR b.held <> coalesce(h.pending, 0)
             ORDER BY k.owner, k.asset
            """)

    async def proceeds_off_their_settlement(self) -> list[asyncpg.Record]:
        """Settled proceeds whose amount is not what their settlement entry moved (those not
        settled yet are clearing's: clearing_and_owed)."""
        return await self.conn.fetch(
            """
            SELECT u.fill_id, u.amount, e.amount AS settled
              FROM ledger.unsettled u JOIN ledger.entries e ON e.entry_id = u.settle_entry
             WHERE u.amount <> e.amount ORDER BY u.fill_id
            """)

    async def unbalanced_assets(self) -> list[asyncpg.Record]:
        return await self.conn.fetch(
            "SELECT asset, sum(amount) AS total FROM ledger.postings GROUP BY asset HAVING sum(amount) <> 0")

    async def fill_terms(self, day: date) -> dict[str, tuple[Decimal | None, int]]:
        """The day's fills the ledger has applied, by id: the price and quantity it recorded."""
        rows = await self.conn.fetch(
            "SELECT execution_id, price, quantity FROM ledger.executions WHERE type = 'FILL' AND trade_date = $1", day)
        return {r["execution_id"]: (r["price"], r["quantity"]) for r in rows}

    async def fills_off_their_captures(self, day: date) -> list[asyncpg.Record]:
        """The day's fills whose captures are not all there (`captures` against `expected`: the
        buyer's cash, unless the fill is worth less than a cent, and the seller's shares), or
        move another amount than the fill's own: the buyer's cash (price x quantity rounded
        down to the cent, fill_cash; or unrounded, a fill applied before fills were rounded) and
        the seller's shares, each as its capture says (`paid`, `moved`) and as its entry's
        postings moved it into the counter book (`paid_posted`, `moved_posted`). One pass over
        the day's fills, each capture found by its key (hold id = the side's order id, capture
        id = the fill's id and leg), one index lookup per leg."""
        return await self.conn.fetch(
            """
            SELECT * FROM (
            SELECT e.execution_id, e.price, e.quantity, e.cash, e.price * e.quantity AS exact, e.expected,
                   (pc.capture_id IS NOT NULL)::int + (sc.capture_id IS NOT NULL)::int AS captures,
                   pc.amount AS paid,
                   (SELECT sum(p.amount) FROM ledger.postings p WHERE p.entry_id = pc.entry_id AND p.amount > 0)
                       AS paid_posted,
                   sc.amount AS moved,
                   (SELECT sum(p.amount) FROM ledger.postings p WHERE p.entry_id = sc.entry_id AND p.amount > 0)
                       AS moved_posted
              FROM (SELECT execution_id, price, quantity, trunc(price * quantity, 2) AS cash,
                           CASE WHEN side = 'BUY' THEN order_id ELSE counter_order_id END AS buyer_order,
                           CASE WHEN side = 'BUY' THEN counter_order_id ELSE order_id END AS seller_order,
                           CASE WHEN {MOVES_CASH} THEN 2 ELSE 1 END AS expected
                      FROM ledger.executions WHERE type = 'FILL' AND trade_date = $1) e
              LEFT JOIN ledger.hold_captures pc  -- the buyer's cash capture
                     ON pc.hold_id = e.buyer_order AND pc.capture_id = e.execution_id || ':cash'
              LEFT JOIN ledger.hold_captures sc  -- the seller's shares capture
                     ON sc.hold_id = e.seller_order AND sc.capture_id = e.execution_id || ':shares'
            ) f
             WHERE captures <> expected
                OR (paid IS NOT NULL AND ((paid <> cash AND paid <> exact) OR paid_posted IS DISTINCT FROM paid))
                OR (moved IS NOT NULL AND (moved <> quantity OR moved_posted IS DISTINCT FROM moved))
            """.format(MOVES_CASH=_MOVES_CASH), day)

    async def fill_ids(self, day: date) -> set[str]:
        rows = await self.conn.fetch(
            "SELECT execution_id FROM ledger.executions WHERE type = 'FILL' AND trade_date = $1", day)
        return {r["execution_id"] for r in rows}
