"""order_svc's only SQL."""
from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import asyncpg

from meshkit import audit, calendar
from meshkit.db import lock_wait_text, sets_lock_wait
from order_svc.domain.model import (TERMINAL, EndReason, Fill, Order, OrderRequest, OrderType, RejectReason, Side,
                                    Status, TimeInForce)

UPDATES_CHANNEL = "stockmesh_order_updates"
OUTBOX_CHANNEL = "stockmesh_order_outbox"  # notified by migration 0006's trigger on every outbox insert

# Orders not over yet: the predicate of the partial index orders_open (migration 0010), word for
# word, so that the planner can prove a query that names it may use that index.
_WORKING = frozenset(s.value for s in Status if s not in TERMINAL)
_WORKING_PREDICATE = "AND status IN ('PENDING_NEW', 'NEW', 'PARTIALLY_FILLED')"
assert _WORKING == {"PENDING_NEW", "NEW", "PARTIALLY_FILLED"}

_COLUMNS = """order_id, account_id, client_order_id, fingerprint, symbol, side, type, time_in_force,
    quantity, limit_price, stop_price, status, hold_asset, hold_amount, collar_price, filled_quantity,
    fill_notional, reject_reason, reject_message, replaced_by, replaces, cancel_requested,
    created_at, updated_at, end_reason, triggered_at"""


def _order(r: asyncpg.Record) -> Order:
    req = OrderRequest(
        account_id=r["account_id"], client_order_id=r["client_order_id"], symbol=r["symbol"],
        side=Side(r["side"]), type=OrderType(r["type"]), quantity=r["quantity"],
        limit_price=r["limit_price"], stop_price=r["stop_price"], time_in_force=TimeInForce(r["time_in_force"]))
    return Order(
        order_id=r["order_id"], request=req, status=Status(r["status"]), created_at=r["created_at"],
        updated_at=r["updated_at"], hold_asset=r["hold_asset"], hold_amount=r["hold_amount"],
        collar_price=r["collar_price"], filled_quantity=r["filled_quantity"],
        fill_notional=r["fill_notional"],
        reject_reason=RejectReason(r["reject_reason"]) if r["reject_reason"] else None,
        reject_message=r["reject_message"], replaced_by=r["replaced_by"], replaces=r["replaces"],
        cancel_requested=r["cancel_requested"], end_reason=EndReason(r["end_reason"]) if r["end_reason"] else None,
        triggered_at=r["triggered_at"])


def _event(o: Order) -> dict:
    return {"orderId": str(o.order_id), "clientOrderId": o.request.client_order_id, "symbol": o.request.symbol,
            "side": o.request.side.value, "type": o.request.type.value, "quantity": o.request.quantity,
            "limitPrice": o.request.limit_price, "stopPrice": o.request.stop_price, "status": o.status.value,
            "holdAsset": o.hold_asset, "holdAmount": o.hold_amount,
            "rejectReason": o.reject_reason.value if o.reject_reason else None,
            "filledQuantity": o.filled_quantity, **({"endReason": o.end_reason.value} if o.end_reason else {}),
            **({"triggeredAt": o.triggered_at.isoformat()} if o.triggered_at else {})}


_Q4 = Decimal("0.0001")


def _q4(d: Decimal | None) -> Decimal | None:
    """A Decimal as a numeric(_, 4) column gives it back (PostgreSQL rounds half away from zero)."""
    return None if d is None else Decimal(d).quantize(_Q4, rounding=ROUND_HALF_UP)


def _as_stored(o: Order) -> Order:
    q = o.request
    return replace(o, request=replace(q, limit_price=_q4(q.limit_price), stop_price=_q4(q.stop_price)),
                   hold_amount=_q4(o.hold_amount), collar_price=_q4(o.collar_price))


def _change_args(o: Order, fill: Fill | None = None, event: str | None = None) -> tuple:
    """The values of one change (orders.record_change, migration 0005): the OrderUpdate row, the audit event (of
    type `event`, else the fill's or the status's) and the notification channel."""
    return (o.status.value, o.filled_quantity, o.fill_notional, o.reject_reason.value if o.reject_reason else None,
            o.reject_message, o.replaced_by, o.updated_at, fill.fill_id if fill else None,
            fill.price if fill else None, fill.quantity if fill else None, fill.executed_at if fill else None,
            event or ("ORDER_FILL" if fill else f"ORDER_{o.status.value}"), audit.canonical(_event(o)), UPDATES_CHANNEL)


def list_sql(statuses: list[str], by_ids: bool = False) -> str:
    """ListOrders' query ($1 account, $2 symbol or NULL, $3 statuses or empty, $4/$5 the cursor,
    $6 the limit; `by_ids`: $7 the order ids, the only ones listed). Asked for orders not over
    yet only, it names the partial index's predicate, so that the planner may read orders_open
    instead of the account's whole history. Asked for some orders by id, a statement of its own
    (not "$7 IS NULL OR", which a prepared statement's generic plan could not read by the
    primary key): they are read by their ids, whatever the account's history."""
    working = _WORKING_PREDICATE if statuses and set(statuses) <= _WORKING else ""
    ids = "AND order_id = ANY($7::uuid[])" if by_ids else ""
    return f"""
        SELECT {_COLUMNS} FROM orders.orders
         WHERE account_id = $1 {working} {ids}
           AND ($2::text IS NULL OR symbol = $2)
           AND (cardinality($3::text[]) = 0 OR status = ANY($3))
           AND ($4::timestamptz IS NULL OR (created_at, order_id) < ($4, $5))
         ORDER BY created_at DESC, order_id DESC
         LIMIT $6
    """


class OrderRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def insert_or_get(self, o: Order, fingerprint: str | None = None) -> tuple[Order, bool]:
        """Insert a new order; if the account already used its client_order_id, return that
        order instead (waiting for an in-flight insert of it to commit)."""
        [inserted] = await self.insert_new([(o, fingerprint or o.request.fingerprint())])
        if inserted is not None:
            return inserted, True
        existing = await self.by_client_order_id(o.account_id, o.request.client_order_id)
        assert existing is not None
        return existing[0], False

    async def insert_new(self, items: list[tuple[Order, str]],
                         outboxes: list[tuple[str, str, bytes] | None] | None = None) -> list[Order | None]:
        """Insert new orders (each with its fingerprint), in the order given, with the change
        each records and, where `outboxes` gives one, its (subject, msg_id, payload) in the
        outbox, in one statement: one round trip and one transaction for all. Each order's id is
        claimed (orders.claims, migration 0007) in the same statement. An order whose id was
        claimed before (by an earlier insert, or by the reaper of orphaned holds) or whose
        account already used its client_order_id (before, or earlier in `items`) is not
        inserted: None in its place. Waits for an in-flight insert of the same id to commit."""
        # The orders as the database stores them (prices and amounts to 4 places), so their
        # audit events read exactly as ones written from the stored rows.
        stored = [_as_stored(o) for o, _ in items]
        cols = list(zip(*(
            (o.order_id, q.account_id, q.client_order_id, fp, q.symbol, q.side.value, q.type.value,
             q.time_in_force.value, q.quantity, q.limit_price, q.stop_price, o.status.value, o.hold_asset,
             o.hold_amount, o.collar_price, o.reject_reason.value if o.reject_reason else None, o.reject_message,
             o.replaces, o.created_at, o.updated_at, audit.canonical(_event(so)), *(ob or (None, None, None)))
            for (o, fp), so, ob in zip(items, stored, outboxes or [None] * len(items)) for q in [o.request])))
        # record_change runs after the sort, so in the order given: callers sort by account to
        # take the accounts' audit heads in one order. The ids are claimed in id order instead,
        # as the reaper claims them (claim_orphans, sorted): a batch and the reaper claiming
        # two ids in opposite orders each waited for the other's until PostgreSQL's deadlock
        # check (a second) undid one (round 22). The Sort of `ins` takes every claim first.
        rows = await self.conn.fetch(
            f"""
            WITH v AS (
                SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                     $7::text[], $8::text[], $9::bigint[], $10::numeric[], $11::numeric[],
                                     $12::text[], $13::text[], $14::numeric[], $15::numeric[], $16::text[],
                                     $17::text[], $18::uuid[], $19::timestamptz[], $20::timestamptz[], $21::text[],
                                     $22::text[], $23::text[], $24::bytea[])
                       WITH ORDINALITY AS v(order_id, account_id, client_order_id, fingerprint, symbol, side, type,
                                            time_in_force, quantity, limit_price, stop_price, status, hold_asset,
                                            hold_amount, collar_price, reject_reason, reject_message, replaces,
                                            created_at, updated_at, audit_payload, subject, msg_id, payload, n)
            ), claim AS (
                INSERT INTO orders.claims (order_id, claimed_by)
                SELECT order_id, 'order' FROM v ORDER BY order_id
                ON CONFLICT (order_id) DO NOTHING
                RETURNING order_id
            ), ins AS (
                INSERT INTO orders.orders ({_COLUMNS})
                SELECT order_id, account_id, client_order_id, fingerprint, symbol, side, type, time_in_force,
                       quantity, limit_price, stop_price, status, hold_asset, hold_amount, collar_price, 0, 0,
                       reject_reason, reject_message, NULL, replaces, false, created_at, created_at, NULL, NULL
                  FROM v JOIN claim USING (order_id) ORDER BY n
                ON CONFLICT (account_id, client_order_id) DO NOTHING
                RETURNING {_COLUMNS}
            ), ob AS (
                INSERT INTO orders.outbox (subject, msg_id, payload)
                SELECT v.subject, v.msg_id, v.payload FROM ins JOIN v USING (order_id)
                 WHERE v.msg_id IS NOT NULL ORDER BY v.n
                ON CONFLICT (msg_id) DO NOTHING
            )
            SELECT ins.*, orders.record_change(
                       ins.account_id, ins.order_id, ins.status, ins.filled_quantity, ins.fill_notional,
                       ins.reject_reason, ins.reject_message, ins.replaced_by, v.updated_at, NULL, NULL, NULL, NULL,
                       'ORDER_' || ins.status, v.audit_payload, $25) AS sequence
              FROM ins JOIN v USING (order_id) ORDER BY v.n
            """, *cols, UPDATES_CHANNEL)
        inserted = {r["order_id"]: _order(r) for r in rows}
        return [inserted.get(o.order_id) for o, _ in items]

    async def by_client_order_id(self, account_id: str, client_order_id: str) -> tuple[Order, str] | None:
        """The account's order with this client_order_id and its fingerprint, if any."""
        row = await self.conn.fetchrow(
            f"SELECT {_COLUMNS} FROM orders.orders WHERE account_id = $1 AND client_order_id = $2",
            account_id, client_order_id)
        return (_order(row), row["fingerprint"]) if row else None

    async def by_client_order_ids(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[Order, str]]:
        """by_client_order_id for many (account, client_order_id) at once, in one statement."""
        rows = await self.conn.fetch(
            f"SELECT {_COLUMNS} FROM orders.orders WHERE (account_id, client_order_id) IN "
            "(SELECT * FROM unnest($1::text[], $2::text[]))", [a for a, _ in keys], [c for _, c in keys])
        return {(r["account_id"], r["client_order_id"]): (_order(r), r["fingerprint"]) for r in rows}

    async def recorded(self, order_ids: list[uuid.UUID]) -> set[uuid.UUID]:
        """Which of these order ids have an order."""
        rows = await self.conn.fetch("SELECT order_id FROM orders.orders WHERE order_id = ANY($1)", order_ids)
        return {r[0] for r in rows}

    async def claim_orphans(self, order_ids: list[uuid.UUID]) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
        """Claim every id not claimed yet, then return (those whose hold no order needs, the
        replacements among them recorded REJECTED). The first: no order can be recorded under
        them any more (a claim waits for an in-flight insert of its id to end, and an order's
        insert claims its id too), and either none was, or a new order (not a replacement) was
        recorded REJECTED: a retry that the checks of its moment rejected after an earlier
        attempt had placed the hold. Their holds can be released. The second: REJECTED is
        final, such a replace never reaches the engine, so a hold transfer the ledger prepared
        for one is to be cancelled. Run as a transaction of two statements: the second sees
        what the first waited for."""
        # In id order, as insert_new claims them: no two claimers wait for each other.
        await self.conn.execute("INSERT INTO orders.claims (order_id, claimed_by) "
                                "SELECT id, 'reaper' FROM unnest($1::uuid[]) AS id ORDER BY id ON CONFLICT DO NOTHING",
                                order_ids)
        rows = await self.conn.fetch("SELECT order_id, status, replaces IS NOT NULL AS replacement FROM orders.orders"
                                     " WHERE order_id = ANY($1)", order_ids)
        found = {r[0] for r in rows if not (r["status"] == "REJECTED" and not r["replacement"])}
        rejected = sorted(r[0] for r in rows if r["status"] == "REJECTED" and r["replacement"])
        return [i for i in order_ids if i not in found], rejected

    async def rejected_replacements(self, replacing: uuid.UUID) -> list[uuid.UUID]:
        """The replacements of the order `replacing` recorded REJECTED (see claim_orphans)."""
        rows = await self.conn.fetch("SELECT order_id FROM orders.orders WHERE replaces = $1 AND status = 'REJECTED'"
                                     " ORDER BY order_id", replacing)
        return [r[0] for r in rows]

    async def pending_replacement(self, replaces: uuid.UUID, *, for_update: bool = False) -> Order | None:
        """The replacement of `replaces` still waiting for the engine (at most one)."""
        row = await self.conn.fetchrow(
            f"SELECT {_COLUMNS} FROM orders.orders WHERE replaces = $1 AND status = 'PENDING_NEW'"
            + (" FOR UPDATE" if for_update else ""), replaces)
        return _order(row) if row else None

    async def has_outbox(self, msg_id: str) -> bool:
        return bool(await self.conn.fetchval("SELECT true FROM orders.outbox WHERE msg_id = $1", msg_id))

    async def fingerprint_of(self, order_id: uuid.UUID) -> str:
        return await self.conn.fetchval("SELECT fingerprint FROM orders.orders WHERE order_id = $1", order_id)

    async def get(self, order_id: uuid.UUID, *, for_update: bool = False, lock_wait: float | None = None,
                  account_id: str | None = None) -> Order | None:
        """The order, if any (with `account_id`: if it is that account's); with `for_update`
        its row locked for the transaction. With `lock_wait` (seconds), no lock of the rest of
        the transaction is waited for longer, this row's included: lock_timeout set,
        transaction-local, by this very statement (no round trip of its own: the filters run on
        the row before it is locked, so another account's order is never waited for), and a
        wait beyond it raises asyncpg's LockNotAvailableError with nothing done."""
        args: list = [order_id]
        where = "order_id = $1"
        if account_id is not None:
            args.append(account_id)
            where += f" AND account_id = ${len(args)}"
        if lock_wait is not None:
            args.append(lock_wait_text(lock_wait))
            where += f" AND {sets_lock_wait(f'${len(args)}')}"
        row = await self.conn.fetchrow(
            f"SELECT {_COLUMNS} FROM orders.orders WHERE {where}" + (" FOR UPDATE" if for_update else ""), *args)
        return _order(row) if row else None

    async def save_transition(self, o: Order, expected: Status, now: datetime,
                              outbox: tuple[str, str, bytes] | None = None) -> bool:
        """Write o's new state if the stored order is still in `expected` (one writer wins),
        with the change it records and, if given, the (subject, msg_id, payload) queued in the
        outbox in the same statement: one round trip, all or nothing."""
        [done] = await self.save_transitions([(o, expected, now, outbox)])
        return done

    async def save_transitions(self, items: list[tuple[Order, Status, datetime, tuple[str, str, bytes] | None]]
                               ) -> list[bool]:
        """save_transition for many orders (each at most once), in the order given, in one
        statement; True for each order whose new state was written (its updated_at is then
        `now`)."""
        if len({o.order_id for o, *_ in items}) != len(items):
            raise ValueError("an order appears twice in one batch of transitions")
        cols = list(zip(*(
            (o.order_id, expected.value, o.status.value, o.reject_reason.value if o.reject_reason else None,
             o.reject_message, o.cancel_requested, now, *(outbox or (None, None, None)), o.filled_quantity,
             o.fill_notional, o.replaced_by, audit.canonical(_event(o)))
            for o, expected, now, outbox in items)))
        rows = await self.conn.fetch(
            """
            WITH v AS (
                SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bool[],
                                     $7::timestamptz[], $8::text[], $9::text[], $10::bytea[], $11::bigint[],
                                     $12::numeric[], $13::uuid[], $14::text[])
                       WITH ORDINALITY AS v(order_id, expected, status, reject_reason, reject_message,
                                            cancel_requested, updated_at, subject, msg_id, payload, filled_quantity,
                                            fill_notional, replaced_by, audit_payload, n)
            ), u AS (
                UPDATE orders.orders o SET status = v.status, reject_reason = v.reject_reason,
                       reject_message = v.reject_message, cancel_requested = v.cancel_requested,
                       updated_at = v.updated_at
                  FROM v
                 WHERE o.order_id = v.order_id AND o.status = v.expected
                RETURNING o.account_id, o.order_id
            ), ob AS (
                INSERT INTO orders.outbox (subject, msg_id, payload)
                SELECT v.subject, v.msg_id, v.payload FROM u JOIN v USING (order_id)
                 WHERE v.msg_id IS NOT NULL ORDER BY v.n
                ON CONFLICT (msg_id) DO NOTHING
            )
            SELECT u.order_id, orders.record_change(
                       u.account_id, u.order_id, v.status, v.filled_quantity, v.fill_notional, v.reject_reason,
                       v.reject_message, v.replaced_by, v.updated_at, NULL, NULL, NULL, NULL, 'ORDER_' || v.status,
                       v.audit_payload, $15)
              FROM u JOIN v USING (order_id) ORDER BY v.n
            """, *cols, UPDATES_CHANNEL)
        done = {r["order_id"] for r in rows}
        for o, _, now, _ in items:
            if o.order_id in done:
                o.updated_at = now
        return [o.order_id in done for o, *_ in items]

    async def mark_cancel_requested(self, o: Order) -> None:
        """A cancel asked for: in the audit trail, not a change of the order a customer sees
        (no OrderUpdate), so its updated_at stays that of its last update (round 16)."""
        await self.conn.execute("UPDATE orders.orders SET cancel_requested = true WHERE order_id = $1", o.order_id)
        o.cancel_requested = True
        await self.audit(o, "CANCEL_REQUESTED")

    async def audit(self, o: Order, event: str | None = None) -> None:
        await audit.append(self.conn, f"order:{o.account_id}", event or f"ORDER_{o.status.value}", _event(o))

    async def save_execution_results(self, orders: list[Order], triggered_in: dict[uuid.UUID, int]) -> None:
        """Write what executions did to orders (fill progress, status, reasons), each order once,
        in one statement: each with its own updated_at as it stands (that of its last change: an
        order whose cancel request alone was cleared keeps its last OrderUpdate's), and with
        `triggered_in` the sequence of the OrderUpdate that told an order's trigger (migration
        0011)."""
        if len({o.order_id for o in orders}) != len(orders):
            raise ValueError("an order appears twice in one batch of execution results")
        if not orders:
            return
        cols = list(zip(*(
            (o.order_id, o.status.value, o.filled_quantity, o.fill_notional,
             o.reject_reason.value if o.reject_reason else None, o.reject_message, o.replaced_by, o.cancel_requested,
             o.end_reason.value if o.end_reason else None, o.triggered_at, o.updated_at,
             triggered_in.get(o.order_id)) for o in orders)))
        await self.conn.execute(
            """
            UPDATE orders.orders o SET status = v.status, filled_quantity = v.filled_quantity,
                   fill_notional = v.fill_notional, reject_reason = v.reject_reason,
                   reject_message = v.reject_message, updated_at = v.updated_at, replaced_by = v.replaced_by,
                   cancel_requested = v.cancel_requested, end_reason = v.end_reason, triggered_at = v.triggered_at,
                   triggered_sequence = coalesce(v.triggered_sequence, o.triggered_sequence)
              FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::numeric[], $5::text[], $6::text[], $7::uuid[],
                          $8::bool[], $9::text[], $10::timestamptz[], $11::timestamptz[], $12::bigint[])
                   AS v(order_id, status, filled_quantity, fill_notional, reject_reason, reject_message,
                        replaced_by, cancel_requested, end_reason, triggered_at, updated_at, triggered_sequence)
             WHERE o.order_id = v.order_id
            """, *cols)

    @staticmethod
    def change(o: Order, fill: Fill | None = None, event: str | None = None, *, update: bool = True) -> tuple:
        """One change of an order as it is now (record_change's values), to record later with
        record_changes: the order may change again before. Without `update`, its audit event
        only (no OrderUpdate: what audit() records, e.g. a refused cancel)."""
        *values, channel = _change_args(o, fill, event)
        return (o.account_id, o.order_id, *values, update, channel)

    async def record_changes(self, changes: list[tuple]) -> list[int | None]:
        """record_change (or, for a change without update, audit) of each of `changes`
        (OrderRepository.change), in the order given, in one statement (the functions run after
        the sort, as in insert_new); the sequence of each one's OrderUpdate (None: none). Each
        takes its account's audit head and update sequence, so callers give them sorted by
        account (keeping each account's own order), as a batch of new orders takes them."""
        if not changes:
            return []
        cols = list(zip(*(c[:-1] for c in changes)))  # the channel (the last value) is one parameter
        rows = await self.conn.fetch(
            """
            SELECT CASE WHEN v.with_update THEN
                       orders.record_change(v.account_id, v.order_id, v.status, v.filled_quantity, v.fill_notional,
                                            v.reject_reason, v.reject_message, v.replaced_by, v.updated_at, v.fill_id,
                                            v.fill_price, v.fill_quantity, v.executed_at, v.audit_type,
                                            v.audit_payload, $17)
                   ELSE audit.append('order:' || v.account_id, v.audit_type, v.audit_payload) END
              FROM unnest($1::text[], $2::uuid[], $3::text[], $4::bigint[], $5::numeric[], $6::text[], $7::text[],
                          $8::uuid[], $9::timestamptz[], $10::text[], $11::numeric[], $12::bigint[],
                          $13::timestamptz[], $14::text[], $15::text[], $16::bool[])
                   WITH ORDINALITY AS v(account_id, order_id, status, filled_quantity, fill_notional, reject_reason,
                                        reject_message, replaced_by, updated_at, fill_id, fill_price, fill_quantity,
                                        executed_at, audit_type, audit_payload, with_update, n)
             ORDER BY v.n
            """, *cols, changes[0][-1])
        return [r[0] if c[-2] else None for c, r in zip(changes, rows)]

    async def claim_executions(self, execution_ids: list[str]) -> set[str]:
        """Record executions as applied, in one statement: the ids not applied before (a repeat
        is dropped by its id)."""
        return {r[0] for r in await self.conn.fetch(
            "INSERT INTO orders.executions_applied (execution_id) SELECT unnest($1::text[]) "
            "ON CONFLICT DO NOTHING RETURNING execution_id", execution_ids)}

    async def lock_orders(self, order_ids: list[uuid.UUID], replacing: list[uuid.UUID]) -> dict[uuid.UUID, Order]:
        """The orders named that exist, and the pending replacements of those `replacing`
        (pending_replacement), locked, in one statement (in one fixed order: account, then id;
        what keeps two transactions from waiting for each other in a cycle is that the changes
        they record take the accounts in account order, see record_changes)."""
        rows = await self.conn.fetch(
            f"SELECT {_COLUMNS} FROM orders.orders WHERE order_id = ANY($1::uuid[]) "
            "OR (replaces = ANY($2::uuid[]) AND status = 'PENDING_NEW') "
            "ORDER BY account_id, order_id FOR UPDATE", order_ids, replacing)
        return {r["order_id"]: _order(r) for r in rows}

    async def latest_update(self, account_id: str) -> int:
        """The sequence of the account's latest order update (0: none yet)."""
        return await self.conn.fetchval(
            "SELECT coalesce(max(sequence), 0) FROM orders.updates WHERE account_id = $1", account_id)

    async def updates_after(self, account_id: str, after: int, limit: int) -> list[tuple[int, Order, Fill | None]]:
        rows = await self.conn.fetch(
            f"""
            SELECT u.sequence, u.status AS u_status, u.filled_quantity AS u_filled, u.fill_notional AS u_notional,
                   u.reject_reason AS u_reason, u.reject_message AS u_message, u.replaced_by AS u_replaced_by,
                   u.updated_at AS u_updated_at, u.fill_id, u.fill_price, u.fill_quantity, u.executed_at,
                   o.triggered_sequence, {", ".join("o." + c.strip() for c in _COLUMNS.split(","))}
              FROM orders.updates u JOIN orders.orders o USING (order_id)
             WHERE u.account_id = $1 AND u.sequence > $2
             ORDER BY u.sequence LIMIT $3
            """, account_id, after, limit)
        out = []
        for r in rows:
            o = _order(r)
            o.status, o.filled_quantity, o.fill_notional = Status(r["u_status"]), r["u_filled"], r["u_notional"]
            o.reject_reason = RejectReason(r["u_reason"]) if r["u_reason"] else None
            o.reject_message, o.replaced_by, o.updated_at = r["u_message"], r["u_replaced_by"], r["u_updated_at"]
            if o.status not in (Status.CANCELLED, Status.EXPIRED):  # an end is the order's last change
                o.end_reason = None
            # A change before the trigger's own update shows the order untriggered (orders
            # triggered before migration 0011 have no such sequence: their times decide).
            trigger = r["triggered_sequence"]
            if o.triggered_at is not None and (r["sequence"] < trigger if trigger is not None
                                               else o.updated_at < o.triggered_at):
                o.triggered_at = None
            fill = (Fill(r["fill_id"], r["fill_price"], r["fill_quantity"], r["executed_at"])
                    if r["fill_id"] else None)
            out.append((r["sequence"], o, fill))
        return out

    async def take_over_outbox(self, subject: str, msg_id: str) -> bool:
        """Delete the unpublished row of `msg_id` if it is queued on another subject than
        `subject` (e.g. a session close queued by hand for another namespace, which the relay
        never publishes), so that the message can be queued again, last, on the right one."""
        return await self.conn.fetchval(
            "DELETE FROM orders.outbox WHERE msg_id = $1 AND published_at IS NULL AND subject <> $2 RETURNING true",
            msg_id, subject) is not None

    async def outbox_namespace(self) -> str | None:
        """The namespace of the latest outbox row's subject (`<namespace>.orders.<SYMBOL>`), or
        None for an empty outbox: where this database's order flow goes."""
        subject = await self.conn.fetchval("SELECT subject FROM orders.outbox ORDER BY id DESC LIMIT 1")
        return None if subject is None else subject.rsplit(".orders.", 1)[0]

    async def published_namespaces(self) -> list[str]:
        """The namespaces of the published outbox rows' subjects (`<namespace>.orders.<SYMBOL>`),
        sorted: where this database's order flow went (rows queued by hand to another namespace
        and never published are not counted)."""
        return [r["ns"] for r in await self.conn.fetch(
            "SELECT DISTINCT substring(subject FROM '^(.*)\\.orders\\.[^.]*$') AS ns FROM orders.outbox "
            "WHERE published_at IS NOT NULL ORDER BY 1") if r["ns"] is not None]

    async def queued(self, msg_ids: list[str]) -> list[str]:
        """Those of `msg_ids` that are in the outbox."""
        return [r["msg_id"] for r in await self.conn.fetch(
            "SELECT msg_id FROM orders.outbox WHERE msg_id = ANY($1::text[])", msg_ids)]

    async def add_outbox(self, subject: str, msg_id: str, payload: bytes) -> bool:
        """Queue a message for the engine; False when this msg_id was queued before."""
        return bool(await self.conn.fetchval(
            "INSERT INTO orders.outbox (subject, msg_id, payload) VALUES ($1, $2, $3) ON CONFLICT (msg_id) DO NOTHING "
            "RETURNING true", subject, msg_id, payload))

    async def list(self, account_id: str, symbol: str | None, statuses: list[str], limit: int,
                   before: tuple[datetime, uuid.UUID] | None, order_ids: list[uuid.UUID] | None = None) -> list[Order]:
        """The account's orders, newest first; with `order_ids`, only those of them."""
        rows = await self.conn.fetch(list_sql(statuses, order_ids is not None), account_id, symbol, statuses,
                                     before[0] if before else None, before[1] if before else None, limit,
                                     *([order_ids] if order_ids is not None else []))
        return [_order(r) for r in rows]

    async def stalled(self, older_than: datetime, limit: int = 100) -> list[uuid.UUID]:
        # A replacement whose replace is in the outbox waits for the engine, not for recovery.
        rows = await self.conn.fetch(
            "SELECT order_id FROM orders.orders o WHERE status = 'PENDING_NEW' AND updated_at < $1 "
            "AND (replaces IS NULL OR NOT EXISTS (SELECT 1 FROM orders.outbox x "
            "                                     WHERE x.msg_id = o.order_id::text || ':replace')) "
            "ORDER BY updated_at LIMIT $2", older_than, limit)
        return [r["order_id"] for r in rows]


# OutboxRepository.prune: one batch of the scan in id order, and what it deleted. A msg_id is
# `close:<day>:<SYMBOL>` or starts with the order id (`<id>`, `<id>:cancel...`, `<id>:replace`).
# A session close stays as long as order_svc's session loop may ask for it again
# (calendar.closes_due looks back at most LOOK_BACK_DAYS), whatever the retention: pruned
# sooner, it would be queued again.
CLOSE_KEPT = calendar.CLOSES_KEPT
_PRUNE = f"""
    WITH batch AS (
        SELECT id, msg_id, published_at IS NOT NULL AND published_at < now() - $2::interval AS old,
               published_at < now() - interval '{CLOSE_KEPT.days} days' AS past_closes,
               starts_with(subject, $4) AS ours
          FROM orders.outbox WHERE id > $1 ORDER BY id LIMIT $3
    ), doomed AS (
        SELECT b.id FROM batch b
         WHERE b.old AND ((b.msg_id LIKE 'close:%' AND b.past_closes)
               OR EXISTS (SELECT 1 FROM orders.orders o
                           WHERE o.order_id = CASE WHEN b.msg_id ~ '^[0-9a-f]{{8}}-([0-9a-f]{{4}}-){{3}}[0-9a-f]{{12}}'
                                                   THEN left(b.msg_id, 36)::uuid END
                             AND o.status IN ({", ".join(sorted(f"'{s.value}'" for s in TERMINAL))})))
    ), gone AS (
        DELETE FROM orders.outbox x USING doomed d WHERE x.id = d.id RETURNING x.id
    )
    SELECT coalesce((SELECT max(id) FROM batch), $1) AS last, (SELECT count(*) FROM gone) AS deleted,
           (SELECT min(id) FROM batch WHERE NOT old AND ours) AS young, (SELECT count(*) FROM batch) < $3 AS at_end
"""


class OutboxRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def unpublished(self, limit: int, prefix: str = "") -> list[asyncpg.Record]:
        """The first `limit` unpublished rows in id order, of the subjects starting with `prefix`."""
        return await self.conn.fetch(
            "SELECT id, subject, msg_id, payload FROM orders.outbox WHERE published_at IS NULL "
            "AND starts_with(subject, $2) ORDER BY id LIMIT $1", limit, prefix)

    async def mark_published(self, ids: list[int]) -> list[float]:
        """Mark the rows published; for each, the seconds from the transaction that wrote it to
        now (both on PostgreSQL's clock)."""
        rows = await self.conn.fetch(
            "UPDATE orders.outbox SET published_at = now() WHERE id = ANY($1) "
            "RETURNING extract(epoch FROM now() - created_at)::float8", ids)
        return [r[0] for r in rows]

    async def prune(self, after_id: int, retention: timedelta, limit: int,
                    prefix: str = "") -> tuple[int, int | None, int]:
        """Delete, among the `limit` rows following id `after_id`, those published longer than
        `retention` ago that nothing will ask about again: a session close, or a command of an
        order that has ended (a live order's rows stay: their msg_id uniqueness is what tells
        a repeated cancel and a pending replace apart from new ones; a row whose msg_id names
        no order we know stays too). Returns (rows deleted; the id to go on after, None when
        there is no need to go on; the id a later scan may start after: the last row looked
        at, or the one before the first row too recent or not yet published among those whose
        subject starts with `prefix`: the relay's own. Another namespace's row that this relay
        never publishes stopped every scan for good, each then deleting at most one batch past
        it, round 19)."""
        row = await self.conn.fetchrow(_PRUNE, after_id, retention, limit, prefix)
        if row["young"] is not None:
            return row["deleted"], None, row["young"] - 1
        return row["deleted"], None if row["at_end"] else row["last"], row["last"]


