"""Read your own writes across the two consumers of the engine's executions: order_svc and the
ledger apply them separately, so a customer can see an order FILLED or CANCELLED a few ms before
the ledger has the shares or has given the cash back. A sale of those shares, or a withdrawal
of that cash, made at once must not be refused for it: before refusing an account that has
something held, the ledger waits for its consumers to apply what the engine has published.

Each test holds the ledger's consumer back (its apply waits for a gate) while order_svc's runs,
and opens the gate only when the ledger asks to wait; without the wait, the gate never opens
and the request is refused."""
from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import grpc
import pytest

from ledger_svc.domain import model as ledger_model
from ledger_svc.service_layer import commands, handlers as ledger, settlement
from ledger_svc.service_layer.unit_of_work import LedgerUnitOfWork
from meshkit import aio, bus, executions
from order_svc.domain.model import OrderRequest, OrderType, RejectReason, Side, Status, TimeInForce
from order_svc.service_layer import handlers, lifecycle
from stockmesh.common.v1 import common_pb2
from stockmesh.matching.v1 import matching_pb2
from tests.integration.conftest import make_order_deps, own_database_fixtures
from tests.support.wait import drained, eventually

pytestmark = pytest.mark.integration

# A database of this module's own: its fills are published in a namespace of each test's own
# (held_back), whose execution journal is not the session's, and a settlement of the day in
# another module (test_settlement.py) run after it on a shared database reported them as
# FILL_NOT_IN_JOURNAL.
pool, database_url, namespace, ledger_addr = own_database_fixtures()


def _order(account: str, side: Side, qty: int, price: str = "187.00") -> OrderRequest:
    return OrderRequest(account_id=account, client_order_id=uuid.uuid4().hex, symbol="AAPL", side=side,
                        type=OrderType.LIMIT, quantity=qty, limit_price=Decimal(price), stop_price=None,
                        time_in_force=TimeInForce.GTC)


async def _publish(js, ns: str, ex: matching_pb2.Execution) -> None:
    ex.time.FromDatetime(datetime.now(timezone.utc))
    await js.publish(bus.subject(ns, "executions", ex.symbol), ex.SerializeToString(),
                     headers={"Nats-Msg-Id": ex.execution_id})


class _HeldBack:
    """The ledger's execution consumer, applying nothing until `gate` opens; and a wait for
    executions in flight (meshkit.executions.wait_applied) that opens it, counting its calls."""

    def __init__(self, js, ns: str, uow) -> None:
        self.js, self.ns, self.uow = js, ns, uow
        self.gate = asyncio.Event()
        self.waits = 0
        self.original = executions.wait_applied

    async def apply(self, ex: executions.Execution) -> None:
        await self.gate.wait()
        await settlement.apply_execution(ex, self.uow)

    async def wait_applied(self, js, namespace: str, durable: str, *, timeout: float = 2.0) -> bool:
        self.waits += 1
        self.gate.set()
        return await self.original(js, namespace, durable, timeout=30.0)


@pytest.fixture
async def held_back(checked_pool, database_url, nats_conn, monkeypatch):
    """A namespace of its own; order_svc's dependencies against a ledger_svc built with NATS
    (so its refusals wait, as in the mesh); order_svc's consumer running, the ledger's held."""
    from ledger_svc.bootstrap import build
    from meshkit.server import create_server

    js = nats_conn.jetstream()
    ns = f"ryw{uuid.uuid4().hex[:8]}"
    for base in ("EXECUTIONS", "orders"):
        await bus.ensure_stream(js, ns, base)
    uow = lambda: LedgerUnitOfWork(checked_pool)  # noqa: E731
    held = _HeldBack(js, ns, uow)
    monkeypatch.setattr(executions, "wait_applied", held.wait_applied)  # bound by build() below
    server, port, _ = await create_server("127.0.0.1:0", build(checked_pool, nats_conn, ns))
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    deps, relay = make_order_deps(checked_pool, database_url, js, ns, channel)
    tasks = [asyncio.create_task(relay.run()),
             asyncio.create_task(executions.consume(js, ns, "orders",
                                                    lambda ex: lifecycle.apply_execution(ex, deps))),
             asyncio.create_task(executions.consume(js, ns, "ledger", held.apply))]
    try:
        yield deps, held
        held.gate.set()  # what is left to apply is applied before the invariants are checked
        assert await drained(js, bus.stream_name(ns, "EXECUTIONS"), executions.consumer_name("ledger", "AAPL"), 30)
    finally:
        try:
            assert not await aio.cancel_and_wait(tasks, 30)
        finally:
            await channel.close()
            await server.stop(None)


async def _reached(deps, order, status: Status) -> bool:
    return (await handlers.get_order(order.account_id, order.order_id, deps)).status is status


async def test_shares_just_bought_can_be_sold_at_once(held_back, nats_conn):
    deps, held = held_back
    uow = held.uow
    buyer, seller = f"buy-{uuid.uuid4().hex[:6]}", f"sell-{uuid.uuid4().hex[:6]}"
    await ledger.deposit(commands.Deposit(buyer, Decimal("1000.00"), "fund"), uow)
    await ledger.credit_shares(commands.CreditShares(seller, "AAPL", Decimal(5), "seed"), uow)
    buy = await handlers.place_order(_order(buyer, Side.BUY, 5), deps)
    sell = await handlers.place_order(_order(seller, Side.SELL, 5), deps)
    assert (buy.status, sell.status) == (Status.NEW, Status.NEW)
    await _publish(nats_conn.jetstream(), held.ns, matching_pb2.Execution(
        execution_id=f"AAPL:{held.ns}:1", symbol="AAPL", type=matching_pb2.EXECUTION_TYPE_FILL,
        order_id=str(buy.order_id), account_id=buyer, side=common_pb2.SIDE_BUY, counter_order_id=str(sell.order_id),
        counter_account_id=seller, price="187.00", quantity=5, leaves_quantity=0, counter_leaves_quantity=0))

    assert await eventually(lambda: _reached(deps, buy, Status.FILLED), timeout=30)  # order_svc shows it
    shares = await ledger.book_balance(buyer, "AAPL", uow)
    assert shares.posted == 0  # the ledger has not applied the fill: the customer is ahead of it

    resale = await handlers.place_order(_order(buyer, Side.SELL, 5), deps)

    assert (resale.status, resale.reject_reason) == (Status.NEW, None), resale.reject_message
    assert held.waits == 1
    shares = await ledger.book_balance(buyer, "AAPL", uow)
    assert (shares.posted, shares.held) == (5, 5)  # the fill applied, then the sale's hold placed


async def test_cash_of_an_order_just_cancelled_can_be_withdrawn_at_once(held_back, nats_conn):
    deps, held = held_back
    uow = held.uow
    account = f"acct-{uuid.uuid4().hex[:6]}"
    await ledger.deposit(commands.Deposit(account, Decimal("1000.00"), "fund"), uow)
    buy = await handlers.place_order(_order(account, Side.BUY, 5), deps)
    assert buy.status is Status.NEW  # 935.00 held
    await _publish(nats_conn.jetstream(), held.ns, matching_pb2.Execution(
        execution_id=f"AAPL:{held.ns}:1", symbol="AAPL", type=matching_pb2.EXECUTION_TYPE_CANCELLED,
        order_id=str(buy.order_id), account_id=account, side=common_pb2.SIDE_BUY, leaves_quantity=5,
        reason="CANCELLED_BY_USER"))
    assert await eventually(lambda: _reached(deps, buy, Status.CANCELLED), timeout=30)
    assert (await ledger.cash_balance(account, uow)).available == Decimal("65.00")  # not released yet

    applied = lambda: executions.wait_applied(nats_conn.jetstream(), held.ns, "ledger")  # noqa: E731
    cash = await ledger.withdraw(commands.Withdraw(account, Decimal("1000.00"), "all"), uow, applied)

    assert cash.total == 0 and held.waits == 1


async def test_an_account_with_nothing_held_is_refused_without_waiting(held_back):
    deps, held = held_back
    account = f"acct-{uuid.uuid4().hex[:6]}"
    await ledger.deposit(commands.Deposit(account, Decimal("10.00"), "fund"), held.uow)
    applied = lambda: executions.wait_applied(None, held.ns, "ledger")  # noqa: E731 - must not be called

    with pytest.raises(ledger_model.InsufficientFunds):
        await ledger.withdraw(commands.Withdraw(account, Decimal("20.00"), "w"), held.uow, applied)
    order = await handlers.place_order(_order(account, Side.SELL, 1), deps)

    assert (order.status, order.reject_reason) == (Status.REJECTED, RejectReason.INSUFFICIENT_SHARES)
    assert held.waits == 0


async def test_wait_applied_answers_at_once_when_nothing_is_outstanding_and_gives_up_when_told(nats_conn, caplog):
    js = nats_conn.jetstream()
    ns = f"ryw{uuid.uuid4().hex[:8]}"
    assert await executions.wait_applied(js, ns, "ledger") is True  # no stream at all: nothing to wait for
    await bus.ensure_stream(js, ns, "EXECUTIONS")
    gate, applied = asyncio.Event(), []

    async def apply(ex: executions.Execution) -> None:
        await gate.wait()
        applied.append(ex.execution_id)

    consumer = asyncio.create_task(executions.consume(js, ns, "ledger", apply, symbols=["AAPL", "MSFT"]))
    try:
        assert await eventually(lambda: _consumers(js, ns), timeout=30)
        assert await executions.wait_applied(js, ns, "ledger") is True  # consumers with nothing to apply
        await _publish(js, ns, matching_pb2.Execution(execution_id="x1", symbol="MSFT", order_id="o1",
                                                      account_id="a1", type=matching_pb2.EXECUTION_TYPE_CANCELLED))
        assert await eventually(lambda: _outstanding(js, ns, "ledger_MSFT"), timeout=30)  # as JetStream counts it
        with caplog.at_level(logging.WARNING, logger="meshkit.executions"):
            assert await executions.wait_applied(js, ns, "ledger", timeout=0.2) is False  # gave up
        assert applied == [] and [r.consumers for r in caplog.records] == [["ledger_MSFT"]]

        # The consumer is let go only once the wait has seen it behind (its first poll).
        assert await executions.wait_applied(_OpensGate(js, gate), ns, "ledger", timeout=30) is True
        assert applied == ["x1"]  # it returned once the execution was applied, not before
        assert len(caplog.records) == 1
    finally:
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)


async def _outstanding(js, ns: str, name: str) -> bool:
    info = await js.consumer_info(bus.stream_name(ns, "EXECUTIONS"), name)
    return bool(info.num_pending or info.num_ack_pending)


class _OpensGate:
    """A JetStream context that opens `gate` when asked about a consumer."""

    def __init__(self, js, gate: asyncio.Event) -> None:
        self.js, self.gate = js, gate

    def __getattr__(self, name: str):
        return getattr(self.js, name)

    async def consumer_info(self, *args, **kwargs):
        self.gate.set()
        return await self.js.consumer_info(*args, **kwargs)


async def _consumers(js, ns: str) -> bool:
    names = {c.name for c in await bus.consumers(js, bus.stream_name(ns, "EXECUTIONS"))}
    return names == {"ledger_AAPL", "ledger_MSFT"}
