"""order_svc applies a consumer's backlog of executions in runs (lifecycle.apply_executions,
round 20; replaces, refused cancels and triggers too since round 21): every execution that
changes orders in one transaction per run, an acceptance alone. Each test
holds a run to what the one-at-a-time path (apply_execution) does with the same executions, on
a twin set of orders (other accounts and ids, the same shapes): the orders, each account's
OrderUpdates (sequence, status, fills, in order) and its audit stream come out the same.

The orders are recorded directly (NEW, or PENDING_NEW for a replacement), without the ledger's
holds: every test ends each of them (one that fails half-way has them ended by hand), so the
ledger invariants checked after it have nothing to say about them."""
from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import asyncpg
import nats.js.errors
import pytest
from prometheus_client import REGISTRY

from ledger_svc.service_layer import commands, handlers as ledger
from ledger_svc.service_layer.unit_of_work import LedgerUnitOfWork
from meshkit import bus, executions
from meshkit.errors import Unavailable
from meshkit.executions import (ACCEPTED, CANCEL_REJECTED, CANCELLED, EXPIRED, FILL, REJECTED, REPLACED, TRIGGERED,
                                Execution)
from order_svc.adapters.repository import OrderRepository
from order_svc.domain.model import Order, OrderRequest, OrderType, Side, Status, TimeInForce
from order_svc.service_layer import handlers, lifecycle
from stockmesh.common.v1 import common_pb2
from stockmesh.matching.v1 import matching_pb2

pytestmark = pytest.mark.integration

T0 = datetime(2026, 12, 7, 15, 0, tzinfo=timezone.utc)  # the engine's times, the same in both twins
PRICE = D("100.00")


@dataclass(frozen=True)
class Shape:
    account: int  # index into the world's accounts
    side: Side
    quantity: int
    type: OrderType = OrderType.LIMIT
    tif: TimeInForce = TimeInForce.GTC
    replaces: str | None = None  # a replacement, PENDING_NEW, of that order (named earlier)
    cancel_requested: bool = False  # a cancel asked for (handlers.cancel_order's mark), not yet answered


_made: list[World] = []


@pytest.fixture(autouse=True)
async def ended_afterwards(checked_pool):
    """A test that failed half-way leaves its orders working without holds: they are ended
    (by hand) before the ledger invariants are checked, so that only that test fails."""
    yield
    accounts = [a for w in _made for a in w.accounts]
    _made.clear()
    async with checked_pool.acquire() as conn:
        await conn.execute(
            "UPDATE orders.orders o SET status = 'CANCELLED' WHERE account_id = ANY($1::text[]) "
            "AND status IN ('PENDING_NEW', 'NEW', 'PARTIALLY_FILLED') "
            "AND NOT EXISTS (SELECT 1 FROM ledger.holds h WHERE h.hold_id = o.order_id::text)", accounts)


class World:
    """One set of accounts and orders of given shapes, named by label (the client_order_id)."""

    def __init__(self, name: str, symbol: str, accounts: int, shapes: dict[str, Shape]) -> None:
        tag = uuid.uuid4().hex[:8]
        self.symbol, self.shapes = symbol, shapes
        self.accounts = [f"xr-{tag}-{name}-{i}" for i in range(accounts)]
        self.prefix = f"{symbol}:{tag}-{name}:"  # of the execution ids: unique in the database
        self.orders: dict[str, Order] = {}
        self.labels: dict[uuid.UUID, str] = {}

    async def create(self, deps) -> None:
        _made.append(self)
        at = datetime.now(timezone.utc)
        for index, (label, s) in enumerate(self.shapes.items()):
            stop = s.type in (OrderType.STOP, OrderType.STOP_LIMIT)
            req = OrderRequest(
                account_id=self.accounts[s.account], client_order_id=label, symbol=self.symbol, side=s.side,
                type=s.type, quantity=s.quantity, limit_price=PRICE if s.type is not OrderType.STOP else None,
                stop_price=D("101.00") if stop else None, time_in_force=s.tif)
            # Ids in the shapes' order, in both twins: the two sides of a fill between two orders
            # of one account are taken in order id order.
            order_id = uuid.UUID(int=(index + 1) << 96 | uuid.uuid4().int >> 32)
            o = Order(order_id=order_id, request=req, status=Status.PENDING_NEW if s.replaces else Status.NEW,
                      created_at=at, updated_at=at, hold_asset="USD" if s.side is Side.BUY else self.symbol,
                      hold_amount=PRICE * s.quantity if s.side is Side.BUY else D(s.quantity),
                      replaces=self.orders[s.replaces].order_id if s.replaces else None)
            self.orders[label], self.labels[o.order_id] = o, label
        items = sorted(((o, o.request.fingerprint()) for o in self.orders.values()),
                       key=lambda it: (it[0].account_id, it[0].request.client_order_id))
        async with deps.uow() as uow:
            assert None not in await uow.orders.insert_new(items)
            for label, s in self.shapes.items():
                if s.cancel_requested:
                    await uow.orders.mark_cancel_requested(self.orders[label])
            await uow.commit()

    def id(self, label: str) -> str:
        return str(self.orders[label].order_id)

    def account(self, label: str) -> str:
        return self.orders[label].account_id

    def fill(self, n: int, taker: str, maker: str, qty: int, price: str = "100.00") -> Execution:
        t, m = self.orders[taker], self.orders[maker]
        return Execution(
            execution_id=f"{self.prefix}{n}", symbol=self.symbol, type=FILL, order_id=str(t.order_id),
            account_id=t.account_id, side=t.request.side.value, counter_order_id=str(m.order_id),
            counter_account_id=m.account_id, price=D(price), quantity=qty, executed_at=T0 + timedelta(seconds=n))

    def event(self, n: int, type_: str, label: str, reason: str = "", new: str | None = None,
              kept: bool = False) -> Execution:
        return Execution(execution_id=f"{self.prefix}{n}", symbol=self.symbol, type=type_, order_id=self.id(label),
                         account_id=self.account(label), reason=reason, new_order_id=self.id(new) if new else "",
                         kept_priority=kept, executed_at=T0 + timedelta(seconds=n))

    def _label(self, order_id) -> str | None:
        return None if order_id is None else self.labels.get(uuid.UUID(str(order_id)), f"? {order_id}")

    async def snapshot(self, deps, pool) -> dict:
        """The orders, each account's OrderUpdates and audit events, with ids as labels (the
        executions' as their numbers): what the twins must have alike."""
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                """
                SELECT o.client_order_id, o.status, o.filled_quantity, o.fill_notional, o.reject_reason,
                       o.reject_message, o.end_reason, o.replaced_by, o.cancel_requested, o.triggered_at,
                       o.triggered_sequence,
                       o.updated_at = (SELECT u.updated_at FROM orders.updates u WHERE u.order_id = o.order_id
                                        ORDER BY u.sequence DESC LIMIT 1) AS updated_as_last_update
                  FROM orders.orders o WHERE o.account_id = ANY($1::text[])
                """, self.accounts)
            orders = {r["client_order_id"]: {**dict(r), "replaced_by": self._label(r["replaced_by"]),
                                             "reject_message": self._labelled(r["reject_message"])} for r in rows}
            audit = {}
            for i, a in enumerate(self.accounts):
                events = await conn.fetch("SELECT seq, event_type, payload FROM audit.events WHERE stream = $1 "
                                          "ORDER BY seq", f"order:{a}")
                audit[i] = [(e["seq"], e["event_type"], self._payload(e["payload"])) for e in events]
            last = {r["account_id"]: r["last_sequence"] for r in await conn.fetch(
                "SELECT account_id, last_sequence FROM orders.account_sequences WHERE account_id = ANY($1::text[])",
                self.accounts)}
        updates = {}
        async with deps.uow() as uow:
            for i, a in enumerate(self.accounts):
                got = await uow.orders.updates_after(a, 0, 1000)
                updates[i] = [(seq, o.request.client_order_id, o.status.value, o.filled_quantity, o.fill_notional,
                               o.reject_reason, self._labelled(o.reject_message), o.end_reason,
                               self._label(o.replaced_by),
                               o.triggered_at,
                               None if f is None else (f.fill_id.removeprefix(self.prefix), f.price, f.quantity,
                                                       f.executed_at))
                              for seq, o, f in got]
                assert [u[0] for u in updates[i]] == list(range(1, len(got) + 1)) == list(range(1, last[a] + 1)), \
                    f"account {a}: sequences not 1..n"
        return {"orders": orders, "updates": updates, "audit": audit}

    def _labelled(self, message: str | None) -> str | None:
        """A message with the order ids it names as labels (a rejected replacement names the
        order it was to replace)."""
        for order_id, label in self.labels.items():
            message = message and message.replace(str(order_id), f"<{label}>")
        return message

    def _payload(self, text: str) -> dict:
        p = json.loads(text)
        p["orderId"] = self._label(p["orderId"])
        return p

    async def run_updated_at(self, pool) -> set[datetime]:
        """The updated_at of every OrderUpdate but the orders' first (NEW, PENDING_NEW)."""
        async with pool.acquire() as conn:
            return {r[0] for r in await conn.fetch(
                "SELECT updated_at FROM orders.updates WHERE account_id = ANY($1::text[]) "
                "AND status NOT IN ('NEW', 'PENDING_NEW')", self.accounts)}


async def twins(order_deps, symbol: str, accounts: int, shapes: dict[str, Shape]) -> tuple[World, World]:
    batched, alone = World("run", symbol, accounts, shapes), World("one", symbol, accounts, shapes)
    await batched.create(order_deps)
    await alone.create(order_deps)
    return batched, alone


async def one_by_one(exs: list[Execution], deps) -> None:
    for ex in exs:
        await lifecycle.apply_execution(ex, deps)


def assert_alike(batched: dict, alone: dict) -> None:
    for part in ("orders", "updates", "audit"):
        assert batched[part] == alone[part], part
    for label, o in batched["orders"].items():
        assert o["updated_as_last_update"], f"order {label}: updated_at is not its last OrderUpdate's"


# --- 1. a run is what one execution at a time does -------------------------------------------

MIXED = {
    "o1": Shape(0, Side.BUY, 10), "o2": Shape(1, Side.SELL, 10), "o3": Shape(0, Side.SELL, 6),
    "o4": Shape(2, Side.BUY, 8), "o5": Shape(1, Side.BUY, 5), "o6": Shape(3, Side.SELL, 12),
    "o7": Shape(2, Side.SELL, 4, tif=TimeInForce.DAY), "o8": Shape(3, Side.BUY, 3, tif=TimeInForce.FOK),
    "o9": Shape(1, Side.SELL, 7), "o10": Shape(0, Side.BUY, 2),
}


def mixed(w: World) -> list[Execution]:
    """Several partial fills of the same orders, orders on both sides of several accounts
    (account 1's three orders interleaved), a fill that completes an order, an end of an order
    already FILLED, a cancel of one partially filled, an expiry, a FOK's and an INVALID
    rejection, every order ended at last."""
    return [
        w.fill(1, "o1", "o2", 3, "100.10"),
        w.fill(2, "o4", "o3", 2, "100.05"),
        w.fill(3, "o5", "o6", 2, "100.20"),
        w.fill(4, "o1", "o9", 4, "100.15"),
        w.fill(5, "o6", "o4", 3, "99.95"),  # taker a seller
        w.fill(6, "o1", "o2", 3, "100.10"),  # o1 FILLED
        w.event(7, CANCELLED, "o9", "USER"),  # partially filled: CANCELLED, CUSTOMER_CANCEL
        w.event(8, EXPIRED, "o7"),  # no reason: SESSION_CLOSE
        w.event(9, REJECTED, "o8", "FOK_NOT_FILLABLE"),
        w.fill(10, "o4", "o3", 3, "100.00"),  # o4 FILLED
        w.event(11, CANCELLED, "o1", "USER"),  # too late: o1 is FILLED, nothing changes
        w.fill(12, "o5", "o6", 3, "100.25"),  # o5 FILLED
        w.event(13, CANCELLED, "o2", "IOC_REMAINDER"),
        w.event(14, CANCELLED, "o3", "SELF_TRADE"),
        w.event(15, EXPIRED, "o6", "SESSION_CLOSE"),
        w.event(16, REJECTED, "o10", "INVALID"),  # INTERNAL, in the engine's word
    ]


async def run_and_one_by_one(order_deps, checked_pool, tag: str, accounts: int, shape, flow):
    """The flow applied as one call of apply_executions on one twin and one execution at a time
    on the other: what the run left, once checked alike, and the two twins."""
    batched, alone = await twins(order_deps, tag, accounts, shape)
    exs = flow(batched)
    assert await lifecycle.apply_executions(exs, order_deps) == len(exs)
    await one_by_one(flow(alone), order_deps)
    got, want = await batched.snapshot(order_deps, checked_pool), await alone.snapshot(order_deps, checked_pool)
    assert_alike(got, want)
    return got, batched, alone


async def test_a_run_leaves_orders_updates_and_audit_as_one_execution_at_a_time(order_deps, checked_pool):
    got, batched, alone = await run_and_one_by_one(order_deps, checked_pool, "RUNA", 4, MIXED, mixed)
    # What the twins came to, spelled out (so that both being wrong alike shows too).
    final = {k: (o["status"], o["filled_quantity"], o["fill_notional"], o["reject_reason"], o["end_reason"])
             for k, o in got["orders"].items()}
    assert final == {
        "o1": ("FILLED", 10, D("1001.2000"), None, None),
        "o2": ("CANCELLED", 6, D("600.6000"), None, "IOC_REMAINDER"),
        "o3": ("CANCELLED", 5, D("500.1000"), None, "SELF_TRADE"),
        "o4": ("FILLED", 8, D("799.9500"), None, None),
        "o5": ("FILLED", 5, D("501.1500"), None, None),
        "o6": ("EXPIRED", 8, D("801.0000"), None, "SESSION_CLOSE"),
        "o7": ("EXPIRED", 0, D("0.0000"), None, "SESSION_CLOSE"),
        "o8": ("REJECTED", 0, D("0.0000"), "FOK_NOT_FILLABLE", None),
        "o9": ("CANCELLED", 4, D("400.6000"), None, "CUSTOMER_CANCEL"),
        "o10": ("REJECTED", 0, D("0.0000"), "INTERNAL", None),
    }
    # Account 1's changes in the stream's order, not grouped by order.
    assert [(u[1], u[10] and u[10][0]) for u in got["updates"][1]] == [
        ("o2", None), ("o5", None), ("o9", None),  # NEW
        ("o2", "1"), ("o5", "3"), ("o9", "4"), ("o2", "6"), ("o9", None), ("o5", "12"), ("o2", None)]
    # One run: one transaction, one time for every change it made.
    assert len(await batched.run_updated_at(checked_pool)) == 1
    assert len(await alone.run_updated_at(checked_pool)) > 1


async def test_a_run_wakes_the_live_streams_of_every_account_it_changed(order_deps, checked_pool, database_url):
    """Live StreamOrderUpdates wake on orders.record_change's notification (the account id on
    the updates channel), sent when the run commits."""
    from order_svc.adapters.repository import UPDATES_CHANNEL

    w = World("ntf", "RUNJ", 4, MIXED)
    await w.create(order_deps)
    heard: list[str] = []
    conn = await asyncpg.connect(database_url)
    try:
        await conn.add_listener(UPDATES_CHANNEL, lambda *args: heard.append(args[-1]))
        exs = mixed(w)
        assert await lifecycle.apply_executions(exs, order_deps) == len(exs)
        for _ in range(100):
            if set(w.accounts) <= set(heard):
                break
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    assert set(w.accounts) <= set(heard)


# --- 2. repeats ------------------------------------------------------------------------------

PAIR = {"x": Shape(0, Side.BUY, 10), "y": Shape(1, Side.SELL, 10)}


async def test_repeats_in_a_run_and_of_runs_before_are_applied_once(order_deps, checked_pool):
    w = World("rep", "RUNB", 2, PAIR)
    await w.create(order_deps)
    f1, f2, f3, f4 = (w.fill(1, "x", "y", 1), w.fill(2, "x", "y", 2), w.fill(3, "y", "x", 3),
                      w.fill(4, "x", "y", 4))

    async def state():
        s = await w.snapshot(order_deps, checked_pool)
        return ({k: (o["status"], o["filled_quantity"]) for k, o in s["orders"].items()},
                [len(s["updates"][i]) for i in (0, 1)], [len(s["audit"][i]) for i in (0, 1)],
                [u[10][0] for u in s["updates"][0] if u[10]])

    assert await lifecycle.apply_executions([f1, f1, f2, f1], order_deps) == 2  # a repeat within the run
    assert await state() == ({"x": ("PARTIALLY_FILLED", 3), "y": ("PARTIALLY_FILLED", 3)}, [3, 3], [3, 3],
                             ["1", "2"])
    assert await lifecycle.apply_executions([f2, f1, f2], order_deps) == 0  # all applied before
    assert await state() == ({"x": ("PARTIALLY_FILLED", 3), "y": ("PARTIALLY_FILLED", 3)}, [3, 3], [3, 3],
                             ["1", "2"])
    assert await lifecycle.apply_executions([f2, f3, f1, f3], order_deps) == 1  # old and new: the new once
    assert await state() == ({"x": ("PARTIALLY_FILLED", 6), "y": ("PARTIALLY_FILLED", 6)}, [4, 4], [4, 4],
                             ["1", "2", "3"])
    assert await lifecycle.apply_executions([f4, f4], order_deps) == 1
    assert await state() == ({"x": ("FILLED", 10), "y": ("FILLED", 10)}, [5, 5], [5, 5], ["1", "2", "3", "4"])
    async with checked_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM orders.executions_applied WHERE execution_id = ANY($1)",
                                   [f.execution_id for f in (f1, f2, f3, f4)]) == 4


# --- 3. triggers, replaces and refused cancels in a run ---------------------------------------

INTERRUPTED = {
    "stop": Shape(0, Side.BUY, 5, type=OrderType.STOP),
    "old": Shape(1, Side.SELL, 10),
    "new": Shape(1, Side.SELL, 12, replaces="old"),
    "maker": Shape(2, Side.BUY, 20),
    "other": Shape(2, Side.SELL, 4),
}


def interrupted(w: World) -> list[Execution]:
    """Fills on both sides of a trigger and of a replace, in the stream's order: a fill of the
    replacement applied before its REPLACED would find it PENDING_NEW, the replacement would
    carry the wrong fills, the stop's fill would show it untriggered. (Until round 21 the trigger
    and the replace were applied alone, between runs.)"""
    return [
        w.fill(1, "maker", "old", 3),
        w.event(2, TRIGGERED, "stop"),
        w.fill(3, "stop", "old", 2),
        w.fill(4, "maker", "other", 1),
        w.event(5, REPLACED, "old", new="new"),  # new: PARTIALLY_FILLED, 5 of 12
        w.fill(6, "maker", "new", 4),
        w.fill(7, "stop", "new", 3),  # both FILLED
        w.event(8, CANCELLED, "maker", "USER"),
        w.event(9, CANCELLED, "other", "USER"),
    ]


async def test_a_run_with_a_trigger_and_a_replace_keeps_the_streams_order(order_deps, checked_pool):
    got, _, _ = await run_and_one_by_one(order_deps, checked_pool, "RUNC", 3, INTERRUPTED, interrupted)
    final = {k: (o["status"], o["filled_quantity"], o["replaced_by"], o["triggered_at"] is not None)
             for k, o in got["orders"].items()}
    assert final == {"stop": ("FILLED", 5, None, True), "old": ("CANCELLED", 5, "new", False),
                     "new": ("FILLED", 12, None, False), "maker": ("CANCELLED", 8, None, False),
                     "other": ("CANCELLED", 1, None, False)}
    # The stop's fills show it triggered (its trigger's update came first).
    assert [(u[2], u[9] is not None) for u in got["updates"][0]] == [
        ("NEW", False), ("NEW", True), ("PARTIALLY_FILLED", True), ("FILLED", True)]


REPLACING = {
    "a": Shape(0, Side.BUY, 10), "a2": Shape(0, Side.BUY, 8, replaces="a"),  # kept its priority
    "b": Shape(1, Side.SELL, 10), "b2": Shape(1, Side.SELL, 14, replaces="b"),  # to the back
    "c": Shape(2, Side.BUY, 6), "c2": Shape(2, Side.BUY, 4, replaces="c"),  # not above c's fills
    "d": Shape(3, Side.SELL, 8, cancel_requested=True),
    "e": Shape(0, Side.SELL, 5), "e2": Shape(0, Side.SELL, 7, replaces="e"),  # refused: INVALID
    "f": Shape(2, Side.SELL, 3, cancel_requested=True),
    "g": Shape(1, Side.BUY, 4), "g2": Shape(1, Side.BUY, 5, replaces="g"),  # refused: g filled first
    "s": Shape(3, Side.BUY, 5, type=OrderType.STOP_LIMIT),
    "s2": Shape(3, Side.BUY, 6, type=OrderType.STOP_LIMIT, replaces="s"),  # a triggered stop's replacement
}


def replacing(w: World) -> list[Execution]:
    """Replaces (priority kept and not), one not above what the old order had filled (its
    CANCELLED of reason REPLACED rejects the replacement), refused cancels (one before fills of
    its order, one after its order filled, one of an order with no cancel asked), refused
    replaces (invalid; the old order filled in the run before), a triggered stop replaced, and
    fills of the same orders before and after, in every account; every order ended at last."""
    return [
        w.fill(1, "a", "b", 2),
        w.event(2, CANCEL_REJECTED, "d", "UNKNOWN_ORDER"),  # d's cancel refused: the flag only, an audit event
        w.fill(3, "c", "d", 5),
        w.event(4, REPLACED, "a", new="a2", kept=True),  # a2 PARTIALLY_FILLED, 2 of 8
        w.fill(5, "a2", "b", 3),
        w.event(6, CANCELLED, "c", "REPLACED"),  # c had filled 5 of 6: ended, c2 rejected
        w.event(7, CANCEL_REJECTED, "e", "INVALID", new="e2"),
        w.fill(8, "g", "f", 3),  # f FILLED
        w.event(9, CANCEL_REJECTED, "f", "UNKNOWN_ORDER"),  # f's cancel refused once it had filled
        w.event(10, REPLACED, "b", new="b2"),  # b2 PARTIALLY_FILLED, 5 of 14
        w.fill(11, "b2", "g", 1),  # g FILLED
        w.event(12, CANCEL_REJECTED, "g", "UNKNOWN_ORDER", new="g2"),
        w.event(13, TRIGGERED, "s"),
        w.fill(14, "s", "e", 2),
        w.event(15, REPLACED, "s", new="s2"),  # s2 PARTIALLY_FILLED 2 of 6, triggered already
        w.fill(16, "s2", "d", 3),  # d FILLED
        w.fill(17, "a2", "b2", 3),  # a2 FILLED
        w.event(18, CANCEL_REJECTED, "d", "UNKNOWN_ORDER"),  # d ended: the refusal is audited, nothing changes
        w.event(19, CANCELLED, "b2", "USER"),
        w.event(20, CANCELLED, "e", "USER"),
        w.event(21, CANCELLED, "s2", "USER"),
    ]


async def transactions(pool, exs: list[Execution]) -> int:
    """How many transactions applied `exs`: each claims its executions' ids (a row of
    orders.executions_applied, whose xmin is the transaction that inserted it)."""
    async with pool.acquire() as conn:
        return await conn.fetchval("SELECT count(DISTINCT xmin::text) FROM orders.executions_applied "
                                   "WHERE execution_id = ANY($1)", [ex.execution_id for ex in exs])


async def test_replaces_and_refused_cancels_go_in_the_run_as_one_at_a_time(order_deps, checked_pool):
    got, batched, alone = await run_and_one_by_one(order_deps, checked_pool, "RUNK", 4, REPLACING, replacing)
    assert await transactions(checked_pool, replacing(batched)) == 1
    assert await transactions(checked_pool, replacing(alone)) == len(replacing(alone))
    o = got["orders"]
    final = {k: (v["status"], v["filled_quantity"], v["reject_reason"], v["end_reason"], v["replaced_by"],
                 v["cancel_requested"]) for k, v in o.items()}
    assert final == {
        "a": ("CANCELLED", 2, None, "REPLACED", "a2", False), "a2": ("FILLED", 8, None, None, None, False),
        "b": ("CANCELLED", 5, None, "REPLACED", "b2", False), "b2": ("CANCELLED", 9, None, "CUSTOMER_CANCEL", None,
                                                                     False),
        "c": ("CANCELLED", 5, None, "REPLACED", None, False), "c2": ("REJECTED", 0, "ORDER_NOT_ACTIVE", None, None,
                                                                     False),
        "d": ("FILLED", 8, None, None, None, False),
        "e": ("CANCELLED", 2, None, "CUSTOMER_CANCEL", None, False),
        "e2": ("REJECTED", 0, "ORDER_NOT_ACTIVE", None, None, False),
        "f": ("FILLED", 3, None, None, None, False),
        "g": ("FILLED", 4, None, None, None, False), "g2": ("REJECTED", 0, "ORDER_NOT_ACTIVE", None, None, False),
        "s": ("CANCELLED", 2, None, "REPLACED", "s2", False),
        "s2": ("CANCELLED", 5, None, "CUSTOMER_CANCEL", None, False),
    }
    assert o["c2"]["reject_message"] == "order <c> had already filled 5 shares; it was cancelled instead"
    assert o["e2"]["reject_message"] == "the engine found the replacement invalid"
    assert "filled, expired or was cancelled" in o["g2"]["reject_message"]
    # The stop's replacement shows the trigger from its own first update on (its trigger sequence).
    assert o["s2"]["triggered_at"] == o["s"]["triggered_at"] == T0 + timedelta(seconds=13)
    assert [(u[1], u[2], u[9] is not None) for u in got["updates"][3] if u[1] == "s2"] == [
        ("s2", "PENDING_NEW", False), ("s2", "PARTIALLY_FILLED", True), ("s2", "PARTIALLY_FILLED", True),
        ("s2", "CANCELLED", True)]
    assert o["s2"]["triggered_sequence"] == next(u[0] for u in got["updates"][3]
                                                 if u[1] == "s2" and u[2] == "PARTIALLY_FILLED")
    # A refused cancel is an audit event only, in its place in the account's stream.
    assert [e[1] for e in got["audit"][2] if e[2]["orderId"] == "f"] == [
        "ORDER_NEW", "CANCEL_REQUESTED", "ORDER_FILL", "CANCEL_REJECTED"]
    # A refusal of an ended order's cancel is audited whether or not a cancel was still pending
    # when it ended: the end cleared the request (Order.transition), so the two are one case.
    assert [e[1] for e in got["audit"][3] if e[2]["orderId"] == "d"] == [
        "ORDER_NEW", "CANCEL_REQUESTED", "CANCEL_REJECTED", "ORDER_FILL", "ORDER_FILL", "CANCEL_REJECTED"]
    assert [u[2] for u in got["updates"][3] if u[1] == "d"] == ["NEW", "PARTIALLY_FILLED", "FILLED"]


async def test_a_refused_cancel_alone_keeps_the_orders_updated_at(order_deps, checked_pool):
    """A refused cancel is not a change a customer sees: the order's updated_at stays its last
    OrderUpdate's (round 16), also when a run around it changes other orders."""
    shapes = {"x": Shape(0, Side.BUY, 10, cancel_requested=True), "y": Shape(1, Side.SELL, 10),
              "z": Shape(1, Side.BUY, 10)}

    def flow(w: World) -> list[Execution]:
        return [w.fill(1, "z", "y", 2), w.event(2, CANCEL_REJECTED, "x", "UNKNOWN_ORDER"), w.fill(3, "z", "y", 8)]

    got, batched, alone = await run_and_one_by_one(order_deps, checked_pool, "RUNL", 2, shapes, flow)
    assert await transactions(checked_pool, flow(batched)) == 1
    assert (got["orders"]["x"]["status"], got["orders"]["x"]["cancel_requested"]) == ("NEW", False)
    assert [e[1] for e in got["audit"][0]] == ["ORDER_NEW", "CANCEL_REQUESTED", "CANCEL_REJECTED"]
    assert [u[2] for u in got["updates"][0]] == ["NEW"]
    for w in (batched, alone):
        assert await lifecycle.apply_executions([w.event(4, CANCELLED, "x", "USER")], order_deps) == 1


async def test_an_order_that_ends_while_its_cancel_is_pending_has_no_cancel_requested(order_deps, checked_pool):
    """An order with a cancel on the way that ends (cancelled by it, or filled or expired before
    the engine came to it) has no cancel pending any more: cancel_requested is cleared in the
    run that ends it, in the run's statements. The
    engine's refusal of the cancel, coming after, is still audited; a cancel asked again of the
    CANCELLED order answers it as it is."""
    shapes = {"c": Shape(0, Side.BUY, 10, cancel_requested=True), "f": Shape(1, Side.SELL, 4, cancel_requested=True),
              "m": Shape(2, Side.BUY, 10), "x": Shape(0, Side.SELL, 3, tif=TimeInForce.DAY, cancel_requested=True),
              "k": Shape(2, Side.SELL, 5)}

    def flow(w: World) -> list[Execution]:
        return [w.fill(1, "m", "f", 4),  # f FILLED, its cancel on the way
                w.fill(2, "c", "k", 2),
                w.event(3, CANCELLED, "c", "USER"),  # the cancel asked: CANCELLED
                w.event(4, EXPIRED, "x", "SESSION_CLOSE"),
                w.event(5, CANCELLED, "m", "USER"), w.event(6, CANCELLED, "k", "USER")]

    got, batched, alone = await run_and_one_by_one(order_deps, checked_pool, "RUNP", 3, shapes, flow)
    assert {k: (o["status"], o["cancel_requested"]) for k, o in got["orders"].items()} == {
        "c": ("CANCELLED", False), "f": ("FILLED", False), "x": ("EXPIRED", False), "m": ("CANCELLED", False),
        "k": ("CANCELLED", False)}
    for w in (batched, alone):  # f's refused cancel, after: an audit event, no change of the order
        assert await lifecycle.apply_executions([w.event(7, CANCEL_REJECTED, "f", "UNKNOWN_ORDER")], order_deps) == 1
        assert [e[1] for e in (await w.snapshot(order_deps, checked_pool))["audit"][1]] == [
            "ORDER_NEW", "CANCEL_REQUESTED", "ORDER_FILL", "CANCEL_REJECTED"]
    assert_alike(await batched.snapshot(order_deps, checked_pool), await alone.snapshot(order_deps, checked_pool))
    again = await handlers.cancel_order(batched.account("c"), batched.orders["c"].order_id, order_deps)
    assert (again.status, again.cancel_requested) == (Status.CANCELLED, False)


class _Counted:
    """A connection whose statements are counted (those the repositories send: BEGIN and
    COMMIT go through the transaction object)."""

    def __init__(self, conn, sent: list[str]) -> None:
        self._conn, self._sent = conn, sent

    def __getattr__(self, name: str):
        attr = getattr(self._conn, name)
        if name not in ("execute", "executemany", "fetch", "fetchrow", "fetchval"):
            return attr

        async def counted(query, *args, **kwargs):
            self._sent.append(query)
            return await attr(query, *args, **kwargs)
        return counted


def counting(deps, pool) -> tuple[handlers.Deps, list[str]]:
    """`deps` (on `pool`) whose units of work count their statements."""
    from dataclasses import replace

    from order_svc.service_layer.unit_of_work import OrderUnitOfWork

    sent: list[str] = []

    class CountedUnitOfWork(OrderUnitOfWork):
        def _open(self, conn) -> None:
            super()._open(_Counted(conn, sent))

    return replace(deps, uow=lambda: CountedUnitOfWork(pool)), sent


async def test_a_runs_statements_do_not_grow_with_its_replaces_and_refused_cancels(order_deps, checked_pool):
    """Four statements (claim, lock, changes, rows) for a run of any length, replaces and
    refused cancels as many as there are."""
    counts = []
    for copies in (1, 3):
        shapes = {f"{k}{i}": replace_shape(s, i) for i in range(copies) for k, s in REPLACING.items()}
        w = World("cnt", "RUNM", 4, shapes)
        await w.create(order_deps)
        deps, sent = counting(order_deps, checked_pool)
        exs = [ex for i in range(copies) for ex in replacing(Renamed(w, i, 100 * i))]
        assert await lifecycle.apply_executions(exs, deps) == len(exs)
        counts.append(len(sent))
        assert await transactions(checked_pool, exs) == 1
    assert counts == [4, 4]


def replace_shape(s: Shape, i: int) -> Shape:
    """`s` in the i-th copy of a set of shapes (its replaced order's label suffixed too)."""
    from dataclasses import replace

    return replace(s, replaces=f"{s.replaces}{i}" if s.replaces else None)


class Renamed:
    """A World seen through the i-th copy of its shapes' labels, its executions numbered from
    `offset`: the same flow again on other orders."""

    def __init__(self, w: World, i: int, offset: int) -> None:
        self.w, self.i, self.offset = w, i, offset

    def fill(self, n: int, taker: str, maker: str, qty: int, price: str = "100.00") -> Execution:
        return self.w.fill(self.offset + n, f"{taker}{self.i}", f"{maker}{self.i}", qty, price)

    def event(self, n: int, type_: str, label: str, reason: str = "", new: str | None = None,
              kept: bool = False) -> Execution:
        return self.w.event(self.offset + n, type_, f"{label}{self.i}", reason, f"{new}{self.i}" if new else None,
                            kept)


# --- 4. orders order_svc does not have -------------------------------------------------------

def unknown_orders() -> float:
    return REGISTRY.get_sample_value("stockmesh_executions_unknown_order_total") or 0.0


async def test_an_order_the_database_does_not_have_is_passed_over_in_a_run_and_the_rest_applies(
        order_deps, checked_pool, caplog):
    w = World("unk", "RUND", 2, PAIR)
    await w.create(order_deps)
    ghost = str(uuid.uuid4())
    half_ghost = w.fill(3, "x", "y", 1)
    exs = [
        w.fill(1, "x", "y", 2),
        Execution(f"{w.prefix}2", w.symbol, CANCELLED, ghost, "nobody", reason="USER"),
        Execution(half_ghost.execution_id, w.symbol, FILL, w.id("x"), w.account("x"), side="BUY",
                  counter_order_id="not-an-order-id", counter_account_id="nobody", price=D("100.00"), quantity=1,
                  executed_at=T0),
        Execution(f"{w.prefix}4", w.symbol, REJECTED, "", "nobody", reason="FOK_NOT_FILLABLE"),
        w.fill(5, "x", "y", 7),
        w.event(6, CANCELLED, "y", "USER"),
    ]
    before = unknown_orders()
    with caplog.at_level(logging.ERROR, logger="order_svc.lifecycle"):
        assert await lifecycle.apply_executions(exs, order_deps) == len(exs)
    assert unknown_orders() == before + 3
    assert [(r.executionId.removeprefix(w.prefix), r.orderId) for r in caplog.records
            if r.getMessage().startswith("execution for an order")] == [
        ("2", ghost), ("3", "not-an-order-id"), ("4", "")]
    s = await w.snapshot(order_deps, checked_pool)
    assert {k: (o["status"], o["filled_quantity"]) for k, o in s["orders"].items()} == {
        "x": ("FILLED", 10), "y": ("CANCELLED", 9)}
    assert [u[10][0] for u in s["updates"][0] if u[10]] == ["1", "3", "5"]
    assert [u[10][0] for u in s["updates"][1] if u[10]] == ["1", "5"]
    async with checked_pool.acquire() as conn:  # every one claimed: a redelivery is a repeat
        assert await conn.fetchval("SELECT count(*) FROM orders.executions_applied WHERE execution_id = ANY($1)",
                                   [ex.execution_id for ex in exs]) == len(exs)
    assert await lifecycle.apply_executions(exs, order_deps) == 0
    assert unknown_orders() == before + 3


async def test_a_run_with_an_execution_that_cannot_apply_applies_what_comes_before_it(order_deps, checked_pool):
    """An execution that does not fit its order (here a fill of an order FILLED already: the
    engine and order_svc disagree, a bug elsewhere) stops its consumer, retried in place for
    ever. One at a time, what came before it was applied (customers saw those fills); a run
    must not hold them back with it: the run is applied one at a time then, and stops at it."""
    from order_svc.domain.model import IllegalTransition

    shapes = {"x": Shape(0, Side.BUY, 3), "y": Shape(1, Side.SELL, 10)}
    batched, alone = await twins(order_deps, "RUNI", 2, shapes)

    def stuck(w: World) -> list[Execution]:
        return [w.fill(1, "x", "y", 2), w.fill(2, "x", "y", 1),  # x FILLED
                w.fill(3, "x", "y", 1),  # cannot apply: x has nothing left
                w.event(4, CANCELLED, "y", "USER")]

    with pytest.raises(IllegalTransition):
        await lifecycle.apply_executions(stuck(batched), order_deps)
    with pytest.raises(IllegalTransition):
        await one_by_one(stuck(alone), order_deps)
    got, want = await batched.snapshot(order_deps, checked_pool), await alone.snapshot(order_deps, checked_pool)
    assert_alike(got, want)
    assert {k: (o["status"], o["filled_quantity"]) for k, o in got["orders"].items()} == {
        "x": ("FILLED", 3), "y": ("PARTIALLY_FILLED", 3)}
    with pytest.raises(IllegalTransition):  # retried whole (meshkit.bus): stuck at the same one
        await lifecycle.apply_executions(stuck(batched), order_deps)
    assert (await batched.snapshot(order_deps, checked_pool))["updates"] == got["updates"]
    # (the bad fill's y ends by hand afterwards: ended_afterwards)


# --- 5. through the consumer: a backlog -------------------------------------------------------

def proto(ex: Execution) -> matching_pb2.Execution:
    kind = matching_pb2.ExecutionType.Value(f"EXECUTION_TYPE_{ex.type}")
    m = matching_pb2.Execution(
        execution_id=ex.execution_id, symbol=ex.symbol, type=kind,
        order_id=ex.order_id, account_id=ex.account_id,
        side={"BUY": common_pb2.SIDE_BUY, "SELL": common_pb2.SIDE_SELL}.get(ex.side, common_pb2.SIDE_UNSPECIFIED),
        counter_order_id=ex.counter_order_id, counter_account_id=ex.counter_account_id,
        price="" if ex.price is None else str(ex.price), quantity=ex.quantity, reason=ex.reason,
        new_order_id=ex.new_order_id, kept_priority=ex.kept_priority)
    assert ex.executed_at is not None
    m.time.FromDatetime(ex.executed_at)
    return m


async def backlog(deps, symbol: str, accounts: int = 8, each: int = 25) -> tuple[World, list[Execution]]:
    """`accounts` accounts, each one BUY and one SELL of `each` (made); accounts × each fills
    of one share (buyer i with seller i+3, taker either side) that fill every order."""
    shapes = {f"{side.value[0]}{i}": Shape(i, side, each) for i in range(accounts) for side in (Side.BUY, Side.SELL)}
    w = World("bl", symbol, accounts, shapes)
    await w.create(deps)
    fills = []
    for n in range(accounts * each):
        buyer, seller = f"B{n % accounts}", f"S{(n + 3) % accounts}"
        taker, maker = (buyer, seller) if n % 3 else (seller, buyer)
        fills.append(w.fill(n, taker, maker, 1, f"{100 + n % 7}.{n % 100:02d}"))
    return w, fills


async def _consumed(js, ns: str, symbol: str, apply_batch):
    return asyncio.create_task(executions.consume(js, ns, "orders", apply_batch=apply_batch, symbols=[symbol]))


async def _drained(js, ns: str, symbol: str, timeout: float = 90.0) -> None:
    """Until the symbol's order_svc consumer has acknowledged everything on its subject."""
    stream = bus.stream_name(ns, "EXECUTIONS")
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            info = await js.consumer_info(stream, executions.consumer_name("orders", symbol))
            if info.num_pending == 0 and info.num_ack_pending == 0:
                last = await bus.last_msg(js, stream, bus.subject(ns, "executions", symbol))
                if info.ack_floor.stream_seq >= last.seq:
                    return
        except nats.js.errors.NotFoundError:  # the consumer, or the subject's last message, not there yet
            pass
        assert asyncio.get_running_loop().time() < deadline, "the consumer did not drain its backlog"
        await asyncio.sleep(0.1)


def assert_backlog_applied(s: dict, w: World, fills: list[Execution], each: int) -> None:
    assert {k: (o["status"], o["filled_quantity"]) for k, o in s["orders"].items()} == {
        k: ("FILLED", each) for k in w.shapes}
    seen: dict[str, int] = {}
    for i, ups in s["updates"].items():
        assert [u[0] for u in ups] == list(range(1, 2 + 2 * each + 1)), f"account {i}"  # 2 NEW + its fills
        for u in ups:
            if u[10]:
                seen[u[10][0]] = seen.get(u[10][0], 0) + 1
    assert seen == {str(n): 2 for n in range(len(fills))}  # each fill once on each side
    for i, ups in s["updates"].items():  # each account's fills in the stream's order
        numbers = [int(u[10][0]) for u in ups if u[10]]
        assert numbers == sorted(numbers), f"account {i}"


async def consumed_in_batches(js, symbol: str, messages: list[tuple[Execution, str]], deps) -> list[int]:
    """`messages` (each an execution and its message id) published on a stream of their own and
    applied by order_svc's consumer of `symbol` until it has drained them: the sizes of the
    batches it was handed."""
    ns = f"xr{uuid.uuid4().hex[:8]}"
    await bus.ensure_stream(js, ns, "executions")
    subject = bus.subject(ns, "executions", symbol)
    sizes: list[int] = []
    try:
        for ex, msg_id in messages:
            await js.publish(subject, proto(ex).SerializeToString(), headers={"Nats-Msg-Id": msg_id})

        async def apply_batch(exs: list[Execution]) -> int:
            sizes.append(len(exs))
            return await lifecycle.apply_executions(exs, deps)

        task = await _consumed(js, ns, symbol, apply_batch)
        try:
            await _drained(js, ns, symbol)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        await js.delete_stream(bus.stream_name(ns, "EXECUTIONS"))
    return sizes


async def test_a_backlog_through_the_consumer_is_applied_once_in_batches_with_gapless_sequences(
        order_deps, checked_pool, nats_conn):
    symbol, each = "RUNE", 25
    w, fills = await backlog(order_deps, symbol, each=each)
    # The same executions again, under other message ids: repeats to drop.
    repeats = [(ex, f"{ex.execution_id}!") for ex in fills[10:15]]
    sizes = await consumed_in_batches(nats_conn.jetstream(), symbol, [(ex, ex.execution_id) for ex in fills] + repeats,
                                      order_deps)
    assert sum(sizes) == len(fills) + 5 and max(sizes) > 1 and max(sizes) <= executions.BATCH
    assert_backlog_applied(await w.snapshot(order_deps, checked_pool), w, fills, each)


async def test_a_burst_of_replaces_and_refused_cancels_through_the_consumer_is_a_transaction_a_batch(
        order_deps, checked_pool, nats_conn):
    """Round 21's soak: after bursts order_svc's consumers were the slow ones, their replaces
    and refused cancels (~9 % of executions) applied one at a time, cutting the runs short.
    Each batch the consumer is handed is one transaction now, and the orders come out as one at
    a time would leave them."""
    symbol, each = "RUNN", 10
    w, fills = await backlog(order_deps, symbol, accounts=4, each=each)
    batched, alone = await twins(order_deps, symbol, 4, REPLACING)
    changes = replacing(batched)
    burst = [ex for k, f in enumerate(fills) for ex in ([f, changes[k // 2]] if k % 2 and k // 2 < len(changes)
                                                        else [f])] + changes[len(fills) // 2:]
    assert len(burst) == len(fills) + len(changes)
    sizes = await consumed_in_batches(nats_conn.jetstream(), symbol, [(ex, ex.execution_id) for ex in burst],
                                      order_deps)
    assert sum(sizes) == len(burst) and max(sizes) > 1
    assert await transactions(checked_pool, burst) == len(sizes)  # one a batch
    await one_by_one(replacing(alone), order_deps)
    assert_alike(await batched.snapshot(order_deps, checked_pool), await alone.snapshot(order_deps, checked_pool))
    assert_backlog_applied(await w.snapshot(order_deps, checked_pool), w, fills, each)


def fail_record_changes(monkeypatch, when, times: int) -> list[int]:
    """record_changes fails `times` times after doing its work (a connection lost before the
    commit), for changes `when` says; the list of failures so far."""
    failed: list[int] = []
    real = OrderRepository.record_changes

    async def record_changes(self, changes):
        sequences = await real(self, changes)
        if len(failed) < times and when(changes):
            failed.append(len(changes))
            raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        return sequences

    monkeypatch.setattr(OrderRepository, "record_changes", record_changes)
    return failed


async def with_trigger(deps, symbol: str, accounts: int, each: int
                       ) -> tuple[World, list[Execution], World, list[Execution]]:
    """A backlog (backlog()) and a STOP's acceptance (of a journal written before the engine
    stopped journaling them) and TRIGGERED to put in its middle: the acceptance, applied alone,
    ends the run before it, so the batch is a run, an execution alone and a run (the trigger's
    and the rest)."""
    w, fills = await backlog(deps, symbol, accounts=accounts, each=each)
    stop = World("bl-stop", symbol, 1, {"stop": Shape(0, Side.BUY, 1, type=OrderType.STOP)})
    await stop.create(deps)
    return w, fills, stop, [stop.event(2, ACCEPTED, "stop"), stop.event(0, TRIGGERED, "stop")]


async def _stop_triggered_once_then_ended(stop: World, deps) -> None:
    async with deps.uow() as uow:
        got = await uow.orders.updates_after(stop.accounts[0], 0, 10)
    assert [(o.status, o.triggered_at is not None) for _, o, _ in got] == [(Status.NEW, False), (Status.NEW, True)]
    assert await lifecycle.apply_executions([stop.event(1, CANCELLED, "stop", "USER")], deps) == 1  # ledger invariants


async def test_a_batch_that_fails_after_a_run_committed_is_applied_once_when_retried_whole(
        order_deps, checked_pool, monkeypatch):
    """meshkit.bus retries a failed batch whole (_until_done): what a run of it committed
    before the failure comes again and is dropped as repeats, the rest is applied once."""
    w, fills, stop, middle = await with_trigger(order_deps, "RUNF", 4, 4)
    half = len(fills) // 2
    second = {f.execution_id for f in fills[half:]}
    batch = fills[:half] + middle + fills[half:]
    failed = fail_record_changes(monkeypatch, lambda changes: any(c[9] in second for c in changes), 1)
    with pytest.raises(asyncpg.ConnectionDoesNotExistError):
        await lifecycle.apply_executions(batch, order_deps)
    assert failed
    async with checked_pool.acquire() as conn:  # the first run stays; the second (the trigger's) is undone
        applied = {r[0] for r in await conn.fetch(
            "SELECT execution_id FROM orders.executions_applied WHERE execution_id = ANY($1)",
            [ex.execution_id for ex in batch])}
    assert applied == {ex.execution_id for ex in fills[:half]}
    assert await lifecycle.apply_executions(batch, order_deps) == len(fills) - half + 1  # the retry
    assert await lifecycle.apply_executions(batch, order_deps) == 0
    assert_backlog_applied(await w.snapshot(order_deps, checked_pool), w, fills, 4)
    await _stop_triggered_once_then_ended(stop, order_deps)


async def test_a_failing_batch_through_the_consumer_is_retried_and_applied_once(
        order_deps, checked_pool, nats_conn, monkeypatch):
    symbol, each = "RUNF", 5
    w, fills, stop, middle = await with_trigger(order_deps, symbol, 4, each)
    half = len(fills) // 2
    second = {f.execution_id for f in fills[half:]}
    failed = fail_record_changes(monkeypatch, lambda changes: any(c[9] in second for c in changes), 2)
    await consumed_in_batches(nats_conn.jetstream(), symbol,
                              [(ex, ex.execution_id) for ex in fills[:half] + middle + fills[half:]], order_deps)
    assert len(failed) == 2
    assert_backlog_applied(await w.snapshot(order_deps, checked_pool), w, fills, each)
    await _stop_triggered_once_then_ended(stop, order_deps)


# --- 6. runs of two symbols and placements at once -------------------------------------------

ROUNDS = 12
PER_ROUND = 3  # fills of each order per round


async def test_runs_of_two_symbols_over_the_same_accounts_and_placements_never_deadlock(order_deps, checked_pool,
                                                                                       caplog):
    """Two symbols' consumers apply runs over the same accounts, the one's in the opposite
    stream order of the other's, while placements of those accounts are recorded in batches:
    each takes the accounts' sequences and audit heads in account order, so none waits for
    another in a cycle (a deadlock's victim raises DeadlockDetectedError, after a second)."""
    n, qty = 4, ROUNDS * PER_ROUND
    shapes = {f"{side.value[0]}{i}": Shape(i, side, qty) for i in range(n) for side in (Side.BUY, Side.SELL)}
    one = World("dl", "RUNG", n, shapes)
    two = World("dl", "RUNH", n, {f"h{k}": s for k, s in shapes.items()})
    two.accounts = one.accounts  # the same accounts, on another symbol
    await one.create(order_deps)
    await two.create(order_deps)
    uow = lambda: LedgerUnitOfWork(checked_pool)  # noqa: E731
    for a in one.accounts:
        await ledger.deposit(commands.Deposit(a, D("1000000.00"), "fund"), uow)
    placed = 0

    async def placement(account: str):
        nonlocal placed
        placed += 1
        req = OrderRequest(account_id=account, client_order_id=f"p{placed}", symbol="AAPL", side=Side.BUY,
                           type=OrderType.LIMIT, quantity=1, limit_price=D("187.00"), stop_price=None,
                           time_in_force=TimeInForce.GTC)
        for _ in range(20):
            try:
                o = await handlers.place_order(req, order_deps)
                assert o.status is Status.NEW, o
                return
            except Unavailable:
                await asyncio.sleep(0.2)
        raise AssertionError("placement unavailable")

    def run(w: World, prefix: str, r: int, accounts: list[int], step: int) -> list[Execution]:
        exs = []
        for k in range(PER_ROUND):
            for i in accounts:  # buyer i, seller i + step: each order once, the accounts in this order
                exs.append(w.fill((r * PER_ROUND + k) * n + i, f"{prefix}B{i}", f"{prefix}S{(i + step) % n}", 1))
        return exs

    errors: list[BaseException] = []

    async def caught(work) -> None:
        try:
            await work
        except Exception as exc:  # noqa: BLE001 - every one is a failure of the test
            errors.append(exc)

    cancelled: set[uuid.UUID] = set()

    async def cancel(w: World, label: str) -> None:  # a customer's cancel: the order's row, then its audit
        o = w.orders[label]
        await handlers.cancel_order(o.account_id, o.order_id, order_deps)
        cancelled.add(o.order_id)

    async def cancels_requested() -> set[uuid.UUID]:
        async with checked_pool.acquire() as conn:
            return {r[0] for r in await conn.fetch(
                "SELECT order_id FROM orders.orders WHERE account_id = ANY($1::text[]) AND cancel_requested",
                one.accounts)}

    labels, statements = list(shapes), order_deps.writes.statements
    with caplog.at_level(logging.WARNING, logger="order_svc.writes"):
        for r in range(ROUNDS):
            await asyncio.gather(
                caught(lifecycle.apply_executions(run(one, "", r, list(range(n)), 1), order_deps)),
                caught(lifecycle.apply_executions(run(two, "h", r, list(reversed(range(n))), -1), order_deps)),
                *(caught(placement(a)) for a in one.accounts * 2),
                *((caught(cancel(one, labels[r % len(labels)])),
                   caught(cancel(two, "h" + labels[-1 - r % len(labels)]))) if r < ROUNDS - 1 else ()))  # still working
            if r == ROUNDS - 2:  # every cancel asked, every order still working (the last round fills them)
                # No run wrote back an order as it was before a cancel request made meanwhile.
                asked = await cancels_requested()
    assert [repr(e) for e in errors] == []  # a deadlock's victim: asyncpg.DeadlockDetectedError
    # A batch of placements a deadlock undid is written again one at a time, in silence but this.
    fell_back = [r for r in caplog.records if "failed as a whole" in r.getMessage()]
    assert fell_back == [], fell_back[0].exc_text if fell_back else ""
    assert order_deps.writes.statements - statements < placed  # placements recorded in batches

    async with checked_pool.acquire() as conn:
        orders = await conn.fetch("SELECT symbol, status, filled_quantity, count(*) FROM orders.orders "
                                  "WHERE account_id = ANY($1::text[]) GROUP BY 1, 2, 3 ORDER BY 1",
                                  one.accounts)
        assert [tuple(r) for r in orders] == [("AAPL", "NEW", 0, 2 * n * ROUNDS), ("RUNG", "FILLED", qty, 2 * n),
                                              ("RUNH", "FILLED", qty, 2 * n)]
        assert asked == cancelled and len(cancelled) == 2 * len(labels)
        for a in one.accounts:  # gapless: 4 NEW, each of its 4 orders filled qty times, 2 placements a round
            seqs = [r[0] for r in await conn.fetch(
                "SELECT sequence FROM orders.updates WHERE account_id = $1 ORDER BY sequence", a)]
            assert seqs == list(range(1, 4 + 4 * qty + 2 * ROUNDS + 1)), a
            assert await conn.fetchval("SELECT last_sequence FROM orders.account_sequences WHERE account_id = $1",
                                       a) == len(seqs)
            events = [r[0] for r in await conn.fetch("SELECT seq FROM audit.events WHERE stream = $1 ORDER BY seq",
                                                     f"order:{a}")]
            assert events == list(range(1, len(seqs) + 4 + 1))  # and its 4 orders' CANCEL_REQUESTED
    assert await cancels_requested() == set()  # FILLED since: no cancel pending
