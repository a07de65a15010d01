"""order_svc's only SQL."""
from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from meshkit import audit
from order_svc.domain.model import (Fill, Order, OrderRequest, OrderType, RejectReason, Side, Status,
                                    TimeInForce)

UPDATES_CHANNEL = "stockmesh_order_updates"

_COLUMNS = """order_id, account_id, client_order_id, fingerprint, symbol, side, type, time_in_force,
    quantity, limit_price, stop_price, status, hold_asset, hold_amount, collar_price, filled_quantity,
    fill_notional, reject_reason, reject_message, replaced_by, replaces, cancel_requested,
    created_at, updated_at"""


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
        cancel_requested=r["cancel_requested"])


def _event(o: Order) -> dict:
    return {"orderId": str(o.order_id), "clientOrderId": o.request.client_order_id, "symbol": o.request.symbol,
            "side": o.request.side.value, "type": o.request.type.value, "quantity": o.request.quantity,
            "limitPrice": o.request.limit_price, "stopPrice": o.request.stop_price, "status": o.status.value,
            "holdAsset": o.hold_asset, "holdAmount": o.hold_amount,
            "rejectReason": o.reject_reason.value if o.reject_reason else None,
            "filledQuantity": o.filled_quantity}


class OrderRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def insert_or_get(self, o: Order, fingerprint: str | None = None) -> tuple[Order, bool]:
        """Insert a new order; if the account already used its client_order_id, return that
        order instead (waiting for an in-flight insert of it to commit)."""
        q = o.request
        row = await self.conn.fetchrow(
            f"""
            INSERT INTO orders.orders ({_COLUMNS})
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, 0, 0, $16, $17,
                    NULL, $18, false, $19, $19)
            ON CONFLICT (account_id, client_order_id) DO NOTHING
            RETURNING {_COLUMNS}
            """,
            o.order_id, q.account_id, q.client_order_id, fingerprint or q.fingerprint(), q.symbol, q.side.value, q.type.value,
            q.time_in_force.value, q.quantity, q.limit_price, q.stop_price, o.status.value, o.hold_asset,
            o.hold_amount, o.collar_price, o.reject_reason.value if o.reject_reason else None,
            o.reject_message, o.replaces, o.created_at)
        if row is not None:
            created = _order(row)
            await self.record_change(created)
            return created, True
        existing = await self.conn.fetchrow(
            f"SELECT {_COLUMNS} FROM orders.orders WHERE account_id = $1 AND client_order_id = $2",
            q.account_id, q.client_order_id)
        return _order(existing), False

    async def by_client_order_id(self, account_id: str, client_order_id: str) -> tuple[Order, str] | None:
        """The account's order with this client_order_id and its fingerprint, if any."""
        row = await self.conn.fetchrow(
            f"SELECT {_COLUMNS} FROM orders.orders WHERE account_id = $1 AND client_order_id = $2",
            account_id, client_order_id)
        return (_order(row), row["fingerprint"]) if row else None

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

    async def get(self, order_id: uuid.UUID, *, for_update: bool = False) -> Order | None:
        row = await self.conn.fetchrow(
            f"SELECT {_COLUMNS} FROM orders.orders WHERE order_id = $1" + (" FOR UPDATE" if for_update else ""),
            order_id)
        return _order(row) if row else None

    async def save_transition(self, o: Order, expected: Status, now: datetime) -> bool:
        """Write o's new state if the stored order is still in `expected` (one writer wins)."""
        done = await self.conn.fetchval(
            """
            UPDATE orders.orders SET status = $3, reject_reason = $4, reject_message = $5,
                   cancel_requested = $6, updated_at = $7
             WHERE order_id = $1 AND status = $2
            RETURNING true
            """, o.order_id, expected.value, o.status.value,
            o.reject_reason.value if o.reject_reason else None, o.reject_message, o.cancel_requested, now)
        if done:
            o.updated_at = now
            await self.record_change(o)
        return bool(done)

    async def mark_cancel_requested(self, o: Order, now: datetime) -> None:
        await self.conn.execute(
            "UPDATE orders.orders SET cancel_requested = true, updated_at = $2 WHERE order_id = $1", o.order_id, now)
        o.cancel_requested, o.updated_at = True, now
        await self.audit(o, "CANCEL_REQUESTED")

    async def audit(self, o: Order, event: str | None = None) -> None:
        await audit.append(self.conn, f"order:{o.account_id}", event or f"ORDER_{o.status.value}", _event(o))

    async def record_change(self, o: Order, fill: Fill | None = None) -> int:
        """One change of an order: its audit event and its OrderUpdate, with the account's next
        sequence (gapless: taken in this transaction), and a notification to live streams."""
        await self.audit(o, "ORDER_FILL" if fill else None)
        seq = await self.conn.fetchval(
            """
            INSERT INTO orders.account_sequences AS s (account_id, last_sequence) VALUES ($1, 1)
            ON CONFLICT (account_id) DO UPDATE SET last_sequence = s.last_sequence + 1
            RETURNING last_sequence
            """, o.account_id)
        await self.conn.execute(
            """
            INSERT INTO orders.updates (account_id, sequence, order_id, status, filled_quantity, fill_notional,
                                        reject_reason, reject_message, replaced_by, updated_at, fill_id, fill_price,
                                        fill_quantity, executed_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
            """, o.account_id, seq, o.order_id, o.status.value, o.filled_quantity, o.fill_notional,
            o.reject_reason.value if o.reject_reason else None, o.reject_message, o.replaced_by, o.updated_at,
            fill.fill_id if fill else None, fill.price if fill else None, fill.quantity if fill else None,
            fill.executed_at if fill else None)
        await self.conn.execute("SELECT pg_notify($1, $2)", UPDATES_CHANNEL, o.account_id)
        return seq

    async def save_execution_result(self, o: Order, now: datetime) -> None:
        """Write what an execution did to an order (fill progress, status, reason)."""
        await self.conn.execute(
            """
            UPDATE orders.orders SET status = $2, filled_quantity = $3, fill_notional = $4, reject_reason = $5,
                   reject_message = $6, updated_at = $7, replaced_by = $8, cancel_requested = $9
             WHERE order_id = $1
            """, o.order_id, o.status.value, o.filled_quantity, o.fill_notional,
            o.reject_reason.value if o.reject_reason else None, o.reject_message, now, o.replaced_by,
            o.cancel_requested)
        o.updated_at = now

    async def claim_execution(self, execution_id: str) -> bool:
        """False when this execution was applied before (a repeat, dropped by its id)."""
        return bool(await self.conn.fetchval(
            "INSERT INTO orders.executions_applied (execution_id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING true",
            execution_id))

    async def updates_after(self, account_id: str, after: int, limit: int) -> list[tuple[int, Order, Fill | None]]:
        rows = await self.conn.fetch(
            f"""
            SELECT u.sequence, u.status AS u_status, u.filled_quantity AS u_filled, u.fill_notional AS u_notional,
                   u.reject_reason AS u_reason, u.reject_message AS u_message, u.replaced_by AS u_replaced_by,
                   u.updated_at AS u_updated_at, u.fill_id, u.fill_price, u.fill_quantity, u.executed_at,
                   {", ".join("o." + c.strip() for c in _COLUMNS.split(","))}
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
            fill = (Fill(r["fill_id"], r["fill_price"], r["fill_quantity"], r["executed_at"])
                    if r["fill_id"] else None)
            out.append((r["sequence"], o, fill))
        return out

    async def add_outbox(self, subject: str, msg_id: str, payload: bytes) -> bool:
        """Queue a message for the engine; False when this msg_id was queued before."""
        return bool(await self.conn.fetchval(
            "INSERT INTO orders.outbox (subject, msg_id, payload) VALUES ($1, $2, $3) ON CONFLICT (msg_id) DO NOTHING "
            "RETURNING true", subject, msg_id, payload))

    async def list(self, account_id: str, symbol: str | None, statuses: list[str], limit: int,
                   before: tuple[datetime, uuid.UUID] | None) -> list[Order]:
        rows = await self.conn.fetch(
            f"""
            SELECT {_COLUMNS} FROM orders.orders
             WHERE account_id = $1
               AND ($2::text IS NULL OR symbol = $2)
               AND (cardinality($3::text[]) = 0 OR status = ANY($3))
               AND ($4::timestamptz IS NULL OR (created_at, order_id) < ($4, $5))
             ORDER BY created_at DESC, order_id DESC
             LIMIT $6
            """, account_id, symbol, statuses, before[0] if before else None, before[1] if before else None, limit)
        return [_order(r) for r in rows]

    async def stalled(self, older_than: datetime, limit: int = 100) -> list[uuid.UUID]:
        # A replacement whose replace is in the outbox waits for the engine, not for recovery.
        rows = await self.conn.fetch(
            "SELECT order_id FROM orders.orders o WHERE status = 'PENDING_NEW' AND updated_at < $1 "
            "AND (replaces IS NULL OR NOT EXISTS (SELECT 1 FROM orders.outbox x "
            "                                     WHERE x.msg_id = o.order_id::text || ':replace')) "
            "ORDER BY updated_at LIMIT $2", older_than, limit)
        return [r["order_id"] for r in rows]


class OutboxRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def unpublished(self, limit: int) -> list[asyncpg.Record]:
        return await self.conn.fetch(
            "SELECT id, subject, msg_id, payload FROM orders.outbox WHERE published_at IS NULL ORDER BY id LIMIT $1",
            limit)

    async def mark_published(self, ids: list[int]) -> None:
        await self.conn.execute("UPDATE orders.outbox SET published_at = now() WHERE id = ANY($1)", ids)


