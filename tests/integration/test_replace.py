"""ReplaceOrder, refused cancels and the session close, with the real engine in this process
(on GOOGL and META, which no other integration test trades), order_svc's saga and relay, the
ledger's HoldService and both execution consumers. The ledger's and orders' invariants are
checked after each test (checked_pool)."""
from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import asyncpg
import pytest
from google.rpc import error_details_pb2

from ledger_svc.entrypoints import mapping as ledger_mapping
from ledger_svc.service_layer import commands, handlers as ledger, settlement
from ledger_svc.service_layer.unit_of_work import LedgerUnitOfWork
from meshkit import bus, calendar, executions
from meshkit.errors import Unavailable
from meshkit.status import to_rpc_status
from order_svc.domain import model
from order_svc.adapters.repository import OrderRepository
from order_svc.domain.model import EndReason, OrderRequest, OrderType, RejectReason, Side, Status, TimeInForce
from order_svc.entrypoints import mapping
from order_svc.service_layer import handlers, lifecycle
from order_svc.service_layer.handlers import ReplaceRequest
from stockmesh.ledger.v1 import ledger_pb2 as lpb
from stockmesh.matching.v1 import matching_pb2
from tests.support.engine import engine_in_process
from tests.support.holds import hold_footprint
from tests.support.wait import executions_drained

pytestmark = pytest.mark.integration
D = Decimal
SYM = "GOOGL"  # reference 172.30
SELL_SYM = "META"  # reference 505.75


@pytest.fixture(scope="module")
async def engine(nats_url, namespace, pool):
    """The matching engine for GOOGL and META on the session's namespace (its snapshot and
    consumers persist in the namespace, so the book carries over from test to test)."""
    async with engine_in_process(nats_url, namespace, (SYM, SELL_SYM)) as eng:
        yield eng
    # Leave the day settled: a later test that settles "today" in this database sees its own fills.
    await settlement.settle(calendar.trading_day(datetime.now(timezone.utc)), luow(pool))


def acct(tag: str = "r") -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}"


def limit(account: str, side: Side, qty: int, price: str, *, symbol: str = SYM,
          tif: TimeInForce = TimeInForce.GTC) -> OrderRequest:
    return OrderRequest(account_id=account, client_order_id=uuid.uuid4().hex, symbol=symbol, side=side,
                        type=OrderType.LIMIT, quantity=qty, limit_price=D(price), stop_price=None, time_in_force=tif)


def replace(account: str, order_id, qty: int, price: str | None, coid: str | None = None) -> ReplaceRequest:
    return ReplaceRequest(account_id=account, order_id=order_id, client_order_id=coid or uuid.uuid4().hex,
                          quantity=qty, limit_price=D(price) if price else None, stop_price=None)


def luow(pool):
    return lambda: LedgerUnitOfWork(pool)


async def fund(pool, account: str, cash: str | None = None, shares: tuple[str, int] | None = None) -> None:
    if cash:
        await ledger.deposit(commands.Deposit(account, D(cash), f"fund-{uuid.uuid4().hex}"), luow(pool))
    if shares:
        await ledger.credit_shares(commands.CreditShares(account, shares[0], D(shares[1]), f"seed-{uuid.uuid4().hex}"),
                                   luow(pool))


async def eventually(check, what: str, timeout: float = 20.0, on_sample=None):
    """Poll `check()` until it returns something truthy (bounded); `on_sample` sees every poll."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if on_sample is not None:
            await on_sample()
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def order_is(deps, account, order_id, *statuses: Status):
    o = await handlers.get_order(account, order_id, deps)
    return o if o.status in statuses else None


async def holds(pool, *hold_ids) -> dict[str, tuple[str, Decimal]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT hold_id, status, amount - captured - released AS left, amount "
                                "FROM ledger.holds WHERE hold_id = ANY($1)", [str(h) for h in hold_ids])
    return {r["hold_id"]: (r["status"], r["amount"]) for r in rows}


async def ledger_caught_up(js, namespace: str) -> None:
    """The ledger's consumer has applied every execution so far: it runs beside order_svc's at
    its own pace, so an order's new status can be seen before the ledger's side of it."""
    assert await executions_drained(js, namespace, "ledger"), "the ledger lags behind"


async def updates_of(pool, order_id) -> list[str]:
    async with pool.acquire() as conn:
        return [r["status"] for r in await conn.fetch(
            "SELECT status FROM orders.updates WHERE order_id = $1 ORDER BY sequence", order_id)]


async def test_buy_to_a_higher_price_holds_exactly_the_difference(engine, order_deps, execution_consumers, checked_pool, namespace):
    a = acct()
    await fund(checked_pool, a, cash="1710.00")
    old = await handlers.place_order(limit(a, Side.BUY, 10, "170.00"), order_deps)
    assert old.status is Status.NEW
    assert (await ledger.cash_balance(a, luow(checked_pool))).available == D("10.00")

    new = await handlers.replace_order(replace(a, old.order_id, 10, "171.00"), order_deps)
    assert (new.status, new.replaces, new.request.limit_price, new.request.time_in_force) == (
        Status.PENDING_NEW, old.order_id, D("171.00"), TimeInForce.GTC)

    samples: list[Decimal] = []

    async def sample() -> None:
        samples.append((await ledger.cash_balance(a, luow(checked_pool))).available)

    await eventually(lambda: order_is(order_deps, a, new.order_id, Status.NEW), "the replacement to work",
                     on_sample=sample)
    await eventually(lambda: order_is(order_deps, a, old.order_id, Status.CANCELLED), "the old order to end")
    done = await handlers.get_order(a, old.order_id, order_deps)
    assert (done.replaced_by, done.end_reason) == (new.order_id, EndReason.REPLACED)
    # A cancel of the replaced order is refused, naming the order working in its place (round 14:
    # it answered CANCELLED, and the client believed itself flat while the replacement worked).
    with pytest.raises(model.OrderNotActive, match=f"replaced by order {new.order_id}") as refused_cancel:
        await handlers.cancel_order(a, old.order_id, order_deps)
    assert refused_cancel.value.metadata["replacedBy"] == str(new.order_id)
    assert (await handlers.get_order(a, new.order_id, order_deps)).status is Status.NEW
    # The 10.00 difference was taken when asked; available never came back up in between.
    assert set(samples) == {D("0.00")}
    await ledger_caught_up(execution_consumers, namespace)
    cash = await ledger.cash_balance(a, luow(checked_pool))
    assert (cash.held, cash.available) == (D("1710.00"), 0)
    h = await holds(checked_pool, old.order_id, new.order_id, f"{new.order_id}:reserve")
    assert h == {str(old.order_id): ("RELEASED", D("1700.00")), str(new.order_id): ("PENDING", D("1710.00")),
                 f"{new.order_id}:reserve": ("RELEASED", D("10.00"))}
    # ListHolds shows the old hold and the reserve as moved into the new one, not given back.
    listed = {r.hold.hold_id: ledger_mapping.hold_to_proto(r.hold, r.transferred_to)
              for r in await ledger.list_holds(a, None, 10, luow(checked_pool))}
    assert {k: (v.status, v.released, v.transferred_to) for k, v in listed.items()} == {
        str(old.order_id): (lpb.HOLD_STATUS_TRANSFERRED, "1700.00", str(new.order_id)),
        f"{new.order_id}:reserve": (lpb.HOLD_STATUS_TRANSFERRED, "10.00", str(new.order_id)),
        str(new.order_id): (lpb.HOLD_STATUS_PENDING, "0.00", "")}

    # Up again with nothing available: refused cleanly, as a REJECTED order; the working one stays.
    refused = await handlers.replace_order(replace(a, new.order_id, 10, "172.00"), order_deps)
    assert (refused.status, refused.reject_reason) == (Status.REJECTED, RejectReason.INSUFFICIENT_FUNDS)
    assert (await handlers.get_order(a, new.order_id, order_deps)).status is Status.NEW
    cash = await ledger.cash_balance(a, luow(checked_pool))
    assert (cash.held, cash.available) == (D("1710.00"), 0)
    assert await updates_of(checked_pool, refused.order_id) == ["PENDING_NEW", "REJECTED"]

    # A cancel of the working replacement still works; everything comes back.
    await handlers.cancel_order(a, new.order_id, order_deps)
    await eventually(lambda: order_is(order_deps, a, new.order_id, Status.CANCELLED), "the cancel")
    await eventually(lambda: _cash_is(checked_pool, a, held=D(0)), "the hold release")
    # Then the replaced order's refusal says its replacement has ended too, not that it works
    # in its place (round 15).
    with pytest.raises(model.OrderNotActive, match=f"order {new.order_id}, has ended too \\(CANCELLED\\)") as ended:
        await handlers.cancel_order(a, old.order_id, order_deps)
    assert (ended.value.metadata["replacedBy"], ended.value.metadata["lastStatus"]) == (str(new.order_id), "CANCELLED")


async def _refusals(deps, account, order_id, *, coid: str = "") -> tuple[model.OrderNotActive, model.OrderNotActive]:
    """The refusals of a CancelOrder and of a ReplaceOrder (10 at 165.00, the first order's own
    values: being replaced comes first) of `order_id`."""
    with pytest.raises(model.OrderNotActive) as cancel:
        await handlers.cancel_order(account, order_id, deps)
    with pytest.raises(model.OrderNotActive) as replaced:
        await handlers.replace_order(replace(account, order_id, 10, "165.00", coid or None), deps)
    return cancel.value, replaced.value


async def test_a_cancel_or_replace_of_an_order_replaced_twice_names_the_one_working(
        engine, order_deps, execution_consumers, checked_pool, namespace):
    """CancelOrder of a replaced order names its replacement and the last of them (round 15);
    ReplaceOrder of it names them alike, in the same ErrorInfo metadata, for the client to
    follow the chain (round 23: it said only "the order is already CANCELLED")."""
    a = acct("chain")
    await fund(checked_pool, a, cash="1700.00")
    first = await handlers.place_order(limit(a, Side.BUY, 10, "165.00"), order_deps)
    second = await handlers.replace_order(replace(a, first.order_id, 10, "164.00"), order_deps)
    await eventually(lambda: order_is(order_deps, a, second.order_id, Status.NEW), "the first replacement")
    cancel, replaced = await _refusals(order_deps, a, first.order_id)
    assert cancel.message == f"the order was replaced by order {second.order_id}, which is working in its place: " \
                             "cancel that one"
    assert replaced.message == cancel.message.replace("cancel that one", "replace that one")
    third = await handlers.replace_order(replace(a, second.order_id, 10, "163.00"), order_deps)
    await eventually(lambda: order_is(order_deps, a, third.order_id, Status.NEW), "the second replacement")
    cancel, replaced = await _refusals(order_deps, a, first.order_id, coid="chain-r")
    assert cancel.message == (f"the order was replaced (by order {second.order_id}, then again): order "
                              f"{third.order_id} is working in its place: cancel that one")
    assert replaced.message == cancel.message.replace("cancel that one", "replace that one")
    for refusal in (cancel, replaced):
        assert (refusal.code, refusal.reason, refusal.metadata) == ("FAILED_PRECONDITION", "ORDER_NOT_ACTIVE", {
            "orderId": str(first.order_id), "status": "CANCELLED", "replacedBy": str(second.order_id),
            "lastReplacement": str(third.order_id), "lastStatus": "NEW"})
        info = error_details_pb2.ErrorInfo()
        assert to_rpc_status(refusal).details[0].Unpack(info) and dict(info.metadata) == refusal.metadata
    async with order_deps.uow() as uow:  # refused, not recorded: the client_order_id is still free
        assert await uow.orders.by_client_order_id(a, "chain-r") is None
    await handlers.cancel_order(a, third.order_id, order_deps)
    await eventually(lambda: order_is(order_deps, a, third.order_id, Status.CANCELLED), "the cancel")
    cancel, replaced = await _refusals(order_deps, a, second.order_id)
    assert cancel.message == (f"the order was replaced by order {third.order_id}; the last of its replacements, "
                              f"order {third.order_id}, has ended too (CANCELLED)")
    assert (replaced.message, replaced.metadata) == (cancel.message, cancel.metadata)
    assert replaced.metadata["lastStatus"] == "CANCELLED"
    await eventually(lambda: _cash_is(checked_pool, a, held=D(0)), "the hold release")


@contextlib.asynccontextmanager
async def _rows_held(pool, *order_ids):
    """The orders' rows locked by another transaction (a stuck session, an operator's
    `SELECT ... FOR UPDATE`) for the block; released (rolled back) after it, whatever happens."""
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.execute("SELECT 1 FROM orders.orders WHERE order_id = ANY($1::uuid[]) FOR UPDATE",
                               list(order_ids))
            yield
        finally:
            await tx.rollback()


def _busy(err: model.OrderBusy, order_id) -> None:
    """An ORDER_BUSY answer as the client reads it: UNAVAILABLE, the order named, safe to retry
    with the same ids, RetryInfo."""
    status = to_rpc_status(err)
    assert (err.code, err.reason, err.metadata) == ("UNAVAILABLE", "ORDER_BUSY", {"orderId": str(order_id)})
    assert "being changed" in err.message and "safe to retry" in err.message and "same ids" in err.message
    assert [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]


async def test_a_cancel_or_replace_of_an_order_another_transaction_holds_is_busy_then_retried(
        engine, order_deps, execution_consumers, checked_pool, namespace, monkeypatch):
    """CancelOrder and ReplaceOrder of an order whose row another transaction holds wait at
    most ORDER_LOCK_WAIT_SECONDS for it (both of the replace's locks: the old order's, then its
    pending replacement's) and answer UNAVAILABLE ORDER_BUSY with RetryInfo (before: each waited
    the pool's 30 s command timeout, then failed INTERNAL). Sent again with the same ids once the
    row is free, each takes effect once."""
    from order_svc import bootstrap

    monkeypatch.setenv("ORDER_LOCK_WAIT_SECONDS", "0.2")
    order_deps.lock_wait = bootstrap.lock_wait()
    a, other = acct("busy"), acct("other")
    await fund(checked_pool, a, cash="3000.00")
    o = await handlers.place_order(limit(a, Side.BUY, 10, "150.00"), order_deps)
    c = await handlers.place_order(limit(a, Side.BUY, 5, "150.00"), order_deps)
    r = replace(a, o.order_id, 10, "151.00")

    async with _rows_held(checked_pool, o.order_id, c.order_id):
        with pytest.raises(model.OrderBusy) as cancel_busy:
            await handlers.cancel_order(a, c.order_id, order_deps)
        _busy(cancel_busy.value, c.order_id)
        with pytest.raises(model.OrderBusy) as replace_busy:
            await handlers.replace_order(r, order_deps)
        _busy(replace_busy.value, o.order_id)
        with pytest.raises(model.OrderNotFound):  # another account's order is not waited for, nor busy
            await handlers.cancel_order(other, c.order_id, order_deps)
        async with checked_pool.acquire() as conn:  # nothing of either was recorded
            assert await conn.fetchval("SELECT count(*) FROM orders.orders WHERE replaces = $1 OR "
                                       "(order_id = $2 AND cancel_requested)", o.order_id, c.order_id) == 0
            assert await conn.fetchval("SELECT count(*) FROM orders.outbox WHERE msg_id LIKE $1",
                                       f"{c.order_id}:cancel%") == 0

    # The replace's second lock: its replacement recorded, the ledger's transfer prepared, and
    # the replacement's row held (by a retry, the recovery loop, a stuck session) when the
    # replace is to be handed to the engine.
    real_transfer = order_deps.holds.transfer
    holder = await checked_pool.acquire()
    tx = holder.transaction()
    await tx.start()

    async def transfer_then_hold(from_hold_id, to_hold_id, *args):
        refused = await real_transfer(from_hold_id, to_hold_id, *args)
        await holder.execute("SELECT 1 FROM orders.orders WHERE order_id = $1 FOR UPDATE", uuid.UUID(to_hold_id))
        return refused

    monkeypatch.setattr(order_deps.holds, "transfer", transfer_then_hold)
    try:
        with pytest.raises(model.OrderBusy) as pending_busy:
            await handlers.replace_order(r, order_deps)
        _busy(pending_busy.value, o.order_id)
    finally:
        await tx.rollback()
        await checked_pool.release(holder)
        monkeypatch.setattr(order_deps.holds, "transfer", real_transfer)

    # Free again: the same calls take effect, once however often they are sent.
    first, again = [await handlers.cancel_order(a, c.order_id, order_deps) for _ in range(2)]
    assert (first.order_id, first.cancel_requested, again.order_id) == (c.order_id, True, c.order_id)
    assert again.cancel_requested or again.status is Status.CANCELLED  # the engine may have been quicker
    new = await handlers.replace_order(r, order_deps)
    assert (new.replaces, (await handlers.replace_order(r, order_deps)).order_id) == (o.order_id, new.order_id)
    async with checked_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM orders.orders WHERE replaces = $1", o.order_id) == 1
        assert await conn.fetchval("SELECT count(*) FROM orders.outbox WHERE msg_id LIKE $1",
                                   f"{c.order_id}:cancel%") == 1
    await eventually(lambda: order_is(order_deps, a, c.order_id, Status.CANCELLED), "the cancel")
    await eventually(lambda: order_is(order_deps, a, new.order_id, Status.NEW), "the replacement")
    await eventually(lambda: order_is(order_deps, a, o.order_id, Status.CANCELLED), "the replaced order to end")
    await handlers.cancel_order(a, new.order_id, order_deps)
    await eventually(lambda: order_is(order_deps, a, new.order_id, Status.CANCELLED), "the replacement's cancel")
    await eventually(lambda: _cash_is(checked_pool, a, held=D(0)), "the holds' release")


async def test_a_buy_stop_moved_up_holds_and_trades_within_the_collar_of_its_new_stop(
        engine, order_deps, execution_consumers, checked_pool, namespace):
    """A buy STOP's collar (the worst price its market order may pay once triggered) follows
    its stop price when a replace moves it: the replacement holds quantity × the new collar,
    as a STOP placed there would, and the engine's order has that collar, not the old one,
    which would lie below the new stop (acceptance round 8: such a stop ended NO_LIQUIDITY)."""
    a = acct()
    await fund(checked_pool, a, cash="2000.00")
    old = await handlers.place_order(OrderRequest(
        account_id=a, client_order_id=uuid.uuid4().hex, symbol=SYM, side=Side.BUY, type=OrderType.STOP, quantity=10,
        limit_price=None, stop_price=D("180.00"), time_in_force=TimeInForce.GTC), order_deps)
    assert (old.status, old.collar_price, old.hold_amount) == (Status.NEW, D("189.00"), D("1890.00"))
    new = await handlers.replace_order(ReplaceRequest(account_id=a, order_id=old.order_id,
                                                      client_order_id=uuid.uuid4().hex, quantity=10,
                                                      limit_price=None, stop_price=D("190.00")), order_deps)
    assert new.collar_price == D("199.50")
    await eventually(lambda: order_is(order_deps, a, new.order_id, Status.NEW), "the replacement to work")
    await ledger_caught_up(execution_consumers, namespace)
    h = await holds(checked_pool, new.order_id)
    assert h == {str(new.order_id): ("PENDING", D("1995.00"))}
    assert engine.owned_engine(SYM).book.get_order(str(new.order_id)).collar == 1_995_000  # 199.50 in ticks
    await handlers.cancel_order(a, new.order_id, order_deps)
    await eventually(lambda: _cash_is(checked_pool, a, held=D(0)), "the hold release")


async def test_a_stop_is_triggered_at_the_engines_time_not_when_order_svc_applies_it(order_deps, checked_pool):
    """triggered_at is the time of the engine's TRIGGERED, as a fill's executed_at is the
    engine's: applied late (order_svc behind, or restarted), the trigger must not look later
    than the fills it led to (acceptance round 10: a stop's fill 105 ms before its trigger)."""
    a = acct()
    await fund(checked_pool, a, shares=(SYM, 5))
    stop = await handlers.place_order(OrderRequest(
        account_id=a, client_order_id=uuid.uuid4().hex, symbol=SYM, side=Side.SELL, type=OrderType.STOP_LIMIT,
        quantity=5, limit_price=D("156.00"), stop_price=D("156.50"), time_in_force=TimeInForce.GTC), order_deps)
    # The engine of a later test sees it, cancelled at once (no test of this file prints that low).
    await handlers.cancel_order(a, stop.order_id, order_deps)
    engine_time = datetime.now(timezone.utc).replace(microsecond=123456) - timedelta(minutes=3)
    assert await lifecycle.apply_execution(executions.Execution(
        execution_id=f"test-trigger-{uuid.uuid4().hex}", symbol=SYM, type="TRIGGERED", order_id=str(stop.order_id),
        account_id=a, executed_at=engine_time), order_deps)
    triggered = await handlers.get_order(a, stop.order_id, order_deps)
    assert (triggered.status, triggered.triggered_at) == (Status.NEW, engine_time)


async def test_a_triggered_stop_limit_says_so_and_can_be_replaced(engine, order_deps, execution_consumers,
                                                                   checked_pool, namespace):
    """When a STOP_LIMIT's stop is reached the customer sees it: the order gets triggered_at
    (still NEW, now working as a limit order) in an OrderUpdate of its own, while the updates
    before it still show it untriggered; and the triggered order can be replaced like a limit
    order, its replacement triggered too (acceptance round 8: no sign of the trigger anywhere,
    and its replace was REJECTED as invalid)."""
    from matching_svc.domain import OrderType as BookType

    a, bidder, hitter = acct(), acct(), acct()
    await fund(checked_pool, a, shares=(SYM, 10))
    await fund(checked_pool, bidder, cash="200.00")
    await fund(checked_pool, hitter, shares=(SYM, 1))

    def order_of(account, side, otype, price, stop=None, tif=TimeInForce.GTC, qty=1) -> OrderRequest:
        return OrderRequest(account_id=account, client_order_id=uuid.uuid4().hex, symbol=SYM, side=side, type=otype,
                            quantity=qty, limit_price=D(price), stop_price=D(stop) if stop else None,
                            time_in_force=tif)

    stop = await handlers.place_order(order_of(a, Side.SELL, OrderType.STOP_LIMIT, "200.00", "199.00", qty=5),
                                      order_deps)
    assert (stop.status, stop.triggered_at) == (Status.NEW, None)
    # A print at 199.00 or below (no test bids that high on this book), near the reference
    # price (the replace below must stay inside the price band). The stop may also have
    # triggered on being placed already, if the last trade was at or below it.
    bid = await handlers.place_order(order_of(bidder, Side.BUY, OrderType.LIMIT, "170.00"), order_deps)
    await handlers.place_order(order_of(hitter, Side.SELL, OrderType.LIMIT, "170.00", tif=TimeInForce.IOC), order_deps)

    async def triggered():
        o = await handlers.get_order(a, stop.order_id, order_deps)
        return o if o.triggered_at is not None else None
    seen = await eventually(triggered, "the stop to trigger")
    assert seen.status is Status.NEW and mapping.order_to_proto(seen).HasField("triggered_at")
    async with order_deps.uow() as uow:
        changes = [(o.status, o.triggered_at is not None) for _, o, _ in await uow.orders.updates_after(a, 0, 10)]
    assert changes == [(Status.NEW, False), (Status.NEW, True)]

    # Its stop is history: a replace may leave it out (round 12: "is required"), and one that
    # names another, even outside the price band, neither is refused for it nor records it.
    first = await handlers.replace_order(ReplaceRequest(account_id=a, order_id=stop.order_id,
                                                        client_order_id=uuid.uuid4().hex, quantity=5,
                                                        limit_price=D("201.00"), stop_price=None), order_deps)
    working = await eventually(lambda: order_is(order_deps, a, first.order_id, Status.NEW), "the replacement to work")
    assert working.triggered_at == seen.triggered_at and working.request.stop_price == D("199.00")
    new = await handlers.replace_order(ReplaceRequest(account_id=a, order_id=first.order_id,
                                                      client_order_id=uuid.uuid4().hex, quantity=5,
                                                      limit_price=D("202.00"), stop_price=D("100.00")), order_deps)
    assert new.status is not Status.REJECTED, new.reject_message
    working = await eventually(lambda: order_is(order_deps, a, new.order_id, Status.NEW), "the replacement to work")
    assert working.triggered_at == seen.triggered_at and working.request.stop_price == D("199.00")
    assert engine.owned_engine(SYM).book.get_order(str(new.order_id)).type is BookType.LIMIT
    # So a replace that changes only its stop price changes nothing (round 23).
    with pytest.raises(model.ReplaceChangesNothing, match="its stop has triggered: a stop price changes nothing"):
        await handlers.replace_order(ReplaceRequest(account_id=a, order_id=new.order_id, client_order_id="x",
                                                    quantity=5, limit_price=D("202.00"), stop_price=D("150.00")),
                                     order_deps)
    await handlers.cancel_order(a, new.order_id, order_deps)
    if not (await handlers.get_order(bidder, bid.order_id, order_deps)).status.is_terminal:
        await handlers.cancel_order(bidder, bid.order_id, order_deps)
    await eventually(lambda: order_is(order_deps, a, new.order_id, Status.CANCELLED), "the cancel")
    # A replay shows each replacement as it streamed live: untriggered while PENDING_NEW (its
    # own first update), triggered from the update that confirmed it on (round 19: the replay
    # showed the old order's trigger on the PENDING_NEW update too).
    async with order_deps.uow() as uow:
        replay = [(o.order_id, o.status, o.triggered_at is not None)
                  for _, o, _ in await uow.orders.updates_after(a, 0, 50)]
    for replacement in (first, new):
        assert [(s, t) for oid, s, t in replay if oid == replacement.order_id][:2] == [
            (Status.PENDING_NEW, False), (Status.NEW, True)], replay


async def _cash_is(pool, account, *, held: Decimal):
    return (await ledger.cash_balance(account, luow(pool))).held == held


async def test_a_stop_triggered_on_arrival_replays_as_it_streamed_live(engine, order_deps, execution_consumers,
                                                                        checked_pool):
    """A stop that the last trade has already reached triggers on arrival, at its acceptance
    time: before its NEW update was recorded. The live stream sent NEW untriggered, then the
    trigger; a replay compared times and showed NEW triggered already (round 14 B). The
    trigger's own update now decides."""
    a, bidder, hitter = acct(), acct(), acct()
    await fund(checked_pool, a, shares=(SYM, 1))
    await fund(checked_pool, bidder, cash="200.00")
    await fund(checked_pool, hitter, shares=(SYM, 1))
    bid = await handlers.place_order(limit(bidder, Side.BUY, 1, "170.00"), order_deps)
    await handlers.place_order(limit(hitter, Side.SELL, 1, "170.00", tif=TimeInForce.IOC), order_deps)
    await eventually(lambda: order_is(order_deps, bidder, bid.order_id, Status.FILLED), "a print at 170.00")
    stop = await handlers.place_order(OrderRequest(
        account_id=a, client_order_id=uuid.uuid4().hex, symbol=SYM, side=Side.SELL, type=OrderType.STOP_LIMIT,
        quantity=1, limit_price=D("200.00"), stop_price=D("175.00"), time_in_force=TimeInForce.GTC), order_deps)

    async def triggered():
        o = await handlers.get_order(a, stop.order_id, order_deps)
        return o if o.triggered_at is not None else None
    await eventually(triggered, "the stop to trigger on arrival")
    async with order_deps.uow() as uow:
        changes = [(o.status, o.triggered_at is not None) for _, o, _ in await uow.orders.updates_after(a, 0, 10)]
    assert changes == [(Status.NEW, False), (Status.NEW, True)]
    await handlers.cancel_order(a, stop.order_id, order_deps)
    await eventually(lambda: order_is(order_deps, a, stop.order_id, Status.CANCELLED), "the cancel")


async def test_lower_quantity_shrinks_the_hold_and_keeps_priority(engine, order_deps, execution_consumers,
                                                                  checked_pool, nats_conn, namespace, acceptances):
    first, second, seller = acct("first"), acct("second"), acct("seller")
    await fund(checked_pool, first, cash="2000.00")
    await fund(checked_pool, second, cash="2000.00")
    await fund(checked_pool, seller, shares=(SYM, 10))
    a = await handlers.place_order(limit(first, Side.BUY, 10, "160.00"), order_deps)
    b = await handlers.place_order(limit(second, Side.BUY, 10, "160.00"), order_deps)  # behind `a` at 160.00
    await eventually(lambda: acceptances.seen(b.order_id), "both orders to rest")

    new = await handlers.replace_order(replace(first, a.order_id, 4, "160.00"), order_deps)
    await eventually(lambda: order_is(order_deps, first, new.order_id, Status.NEW), "the replacement")
    # The account's updates end the old order before the new one works (round 27: the other way
    # round, a client keeping its open orders from them counted the quantity twice).
    async with order_deps.uow() as uow:
        updates = [(o.order_id, o.status) for _, o, _ in await uow.orders.updates_after(first, 0, 10)]
    assert updates == [(a.order_id, Status.NEW), (new.order_id, Status.PENDING_NEW), (a.order_id, Status.CANCELLED),
                       (new.order_id, Status.NEW)], updates
    await ledger_caught_up(execution_consumers, namespace)
    assert await holds(checked_pool, new.order_id) == {str(new.order_id): ("PENDING", D("640.00"))}
    cash = await ledger.cash_balance(first, luow(checked_pool))
    assert (cash.held, cash.available) == (D("640.00"), D("1360.00"))
    async with checked_pool.acquire() as conn:
        kept = await conn.fetchval("SELECT count(*) FROM ledger.executions WHERE type = 'REPLACED' AND order_id = $1",
                                   str(a.order_id))
    assert kept == 1

    # The replacement kept its place ahead of `b`: a sell of 6 fills it (4) first, then 2 of `b`.
    await handlers.place_order(limit(seller, Side.SELL, 6, "160.00"), order_deps)
    filled = await eventually(lambda: order_is(order_deps, first, new.order_id, Status.FILLED), "the fill")
    assert (filled.filled_quantity, filled.average_fill_price) == (4, D("160.0000"))
    second_order = await eventually(lambda: order_is(order_deps, second, b.order_id, Status.PARTIALLY_FILLED),
                                    "b's partial fill")
    assert second_order.filled_quantity == 2
    await eventually(lambda: _cash_is(checked_pool, first, held=D(0)), "the filled hold to resolve")
    assert (await ledger.cash_balance(first, luow(checked_pool))).total == D("1360.00")
    await handlers.cancel_order(second, b.order_id, order_deps)
    await eventually(lambda: order_is(order_deps, second, b.order_id, Status.CANCELLED), "b's cancel")
    await eventually(lambda: _cash_is(checked_pool, second, held=D(0)), "b's hold release")


async def _shares_held(pool, account, held: int) -> bool:
    return (await ledger.book_balance(account, SYM, luow(pool))).held == held


async def test_sell_quantity_down_then_refused_up(engine, order_deps, execution_consumers, checked_pool, namespace):
    s = acct("seller")
    await fund(checked_pool, s, shares=(SELL_SYM, 100))
    old = await handlers.place_order(limit(s, Side.SELL, 100, "520.00", symbol=SELL_SYM), order_deps)
    new = await handlers.replace_order(replace(s, old.order_id, 60, "520.00"), order_deps)
    await eventually(lambda: order_is(order_deps, s, new.order_id, Status.NEW), "the replacement")
    await ledger_caught_up(execution_consumers, namespace)
    shares = await ledger.book_balance(s, SELL_SYM, luow(checked_pool))
    assert (shares.posted, shares.held, shares.available) == (100, 60, 40)
    assert await holds(checked_pool, new.order_id) == {str(new.order_id): ("PENDING", D(60))}

    # 120 shares is more than the 100 owned: the new order is REJECTED, nothing changes.
    refused = await handlers.replace_order(replace(s, new.order_id, 120, "520.00"), order_deps)
    assert (refused.status, refused.reject_reason) == (Status.REJECTED, RejectReason.INSUFFICIENT_SHARES)
    shares = await ledger.book_balance(s, SELL_SYM, luow(checked_pool))
    assert (shares.held, shares.available) == (60, 40)
    # Up to 100 (and a new price): the 40 more are reserved when asked, then become the new hold.
    up = await handlers.replace_order(replace(s, new.order_id, 100, "521.00"), order_deps)
    assert (await ledger.book_balance(s, SELL_SYM, luow(checked_pool))).held == 100
    await eventually(lambda: order_is(order_deps, s, up.order_id, Status.NEW), "the second replacement")
    assert (await handlers.get_order(s, new.order_id, order_deps)).replaced_by == up.order_id
    await ledger_caught_up(execution_consumers, namespace)
    assert await holds(checked_pool, up.order_id) == {str(up.order_id): ("PENDING", D(100))}
    await handlers.cancel_order(s, up.order_id, order_deps)
    await eventually(lambda: order_is(order_deps, s, up.order_id, Status.CANCELLED), "the cancel")


async def test_not_found_not_active_and_idempotent(engine, order_deps, execution_consumers, checked_pool, namespace):
    a, other, seller = acct(), acct("other"), acct("seller")
    await fund(checked_pool, a, cash="5000.00")
    await fund(checked_pool, seller, shares=(SYM, 5))
    o = await handlers.place_order(limit(a, Side.BUY, 10, "165.00"), order_deps)
    with pytest.raises(model.OrderNotFound):
        await handlers.replace_order(replace(other, o.order_id, 10, "166.00"), order_deps)
    with pytest.raises(model.OrderNotFound):
        await handlers.replace_order(replace(a, uuid.uuid4(), 10, "166.00"), order_deps)

    req = replace(a, o.order_id, 12, "166.00", coid="rep-1")
    first = await handlers.replace_order(req, order_deps)
    again = await asyncio.gather(*(handlers.replace_order(req, order_deps) for _ in range(5)))
    assert {x.order_id for x in again} == {first.order_id}
    with pytest.raises(model.DuplicateClientOrderId):
        await handlers.replace_order(replace(a, o.order_id, 13, "166.00", coid="rep-1"), order_deps)
    with pytest.raises(model.DuplicateClientOrderId):  # a PlaceOrder reusing it is another request
        await handlers.place_order(OrderRequest(a, "rep-1", SYM, Side.BUY, OrderType.LIMIT, 12, D("166.00"), None,
                                                TimeInForce.GTC), order_deps)
    new = await eventually(lambda: order_is(order_deps, a, first.order_id, Status.NEW), "the replacement")
    # Retried after it completed (the old order is CANCELLED now): still the same reply.
    assert (await handlers.replace_order(req, order_deps)).order_id == first.order_id
    assert new.request.quantity == 12
    with pytest.raises(model.OrderNotActive):  # the old order ended
        await handlers.replace_order(replace(a, o.order_id, 10, "166.00"), order_deps)
    await ledger_caught_up(execution_consumers, namespace)
    cash = await ledger.cash_balance(a, luow(checked_pool))
    assert cash.held == D("1992.00")  # 12 x 166.00

    # Filled: FAILED_PRECONDITION ORDER_NOT_ACTIVE.
    b = await handlers.place_order(limit(a, Side.BUY, 5, "175.00"), order_deps)
    await handlers.place_order(limit(seller, Side.SELL, 5, "175.00"), order_deps)
    await eventually(lambda: order_is(order_deps, a, b.order_id, Status.FILLED), "the fill")
    with pytest.raises(model.OrderNotActive) as e:
        await handlers.replace_order(replace(a, b.order_id, 5, "176.00"), order_deps)
    assert e.value.reason == "ORDER_NOT_ACTIVE"
    await handlers.cancel_order(a, new.order_id, order_deps)
    await eventually(lambda: order_is(order_deps, a, new.order_id, Status.CANCELLED), "the cancel")
    await ledger_caught_up(execution_consumers, namespace)  # its hold released before the invariants


async def test_a_replace_that_changes_nothing_is_refused_and_recorded_nowhere_but_a_retry_is_answered(
        engine, order_deps, execution_consumers, checked_pool, namespace, monkeypatch):
    """A replace whose quantity and prices are the order's own made a new order id and used up
    its client_order_id for nothing (round 23): INVALID_ARGUMENT REPLACE_CHANGES_NOTHING, and
    nothing recorded, so the same request is refused again and its client_order_id can still
    replace. Looked up first, a retry of a replace accepted before is answered its order, also
    one that changed nothing (accepted by an earlier version) and whose replacement has the
    very values of the request now."""
    a = acct("same")
    await fund(checked_pool, a, cash="2000.00")
    o = await handlers.place_order(limit(a, Side.BUY, 10, "165.00"), order_deps)
    for _ in range(2):  # sent again: refused again
        with pytest.raises(model.ReplaceChangesNothing) as refused:
            await handlers.replace_order(replace(a, o.order_id, 10, "165.0", coid="same-1"), order_deps)
        err = refused.value
        assert (err.code, err.reason, err.metadata) == ("INVALID_ARGUMENT", "REPLACE_CHANGES_NOTHING",
                                                       {"orderId": str(o.order_id)})
        assert err.message.startswith(f"nothing would change: order {o.order_id} has quantity 10 and limit price "
                                      "165.00 already")
        request = error_details_pb2.BadRequest()
        assert to_rpc_status(err).details[1].Unpack(request)
        assert [v.field for v in request.field_violations] == ["quantity", "limit_price"]
    assert await updates_of(checked_pool, o.order_id) == ["NEW"]
    assert [x.order_id for x in await handlers.list_orders(a, None, [], 10, None, order_deps)] == [o.order_id]
    # Nor kept in the ledger (a replace keeps its id there only once its checks pass: round 27).
    async with checked_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM ledger.client_keys WHERE account_id = $1", a) == 0

    # The client_order_id was not used up: it replaces, and its retries get that replacement.
    req = replace(a, o.order_id, 11, "165.00", coid="same-1")
    new = await handlers.replace_order(req, order_deps)
    assert (new.status, new.replaces, new.request.quantity) == (Status.PENDING_NEW, o.order_id, 11)
    await eventually(lambda: order_is(order_deps, a, new.order_id, Status.NEW), "the replacement")
    assert (await handlers.replace_order(req, order_deps)).order_id == new.order_id

    # A replace that changed nothing, accepted before this rule: its retry, before and after the
    # replace completed, is answered that replacement (whose values are the request's), not refused.
    with monkeypatch.context() as before:
        before.setattr(model, "check_changes_something", lambda old, req: None)
        same = await handlers.replace_order(replace(a, new.order_id, 11, "165.00", coid="same-2"), order_deps)
    assert (same.status, same.replaces) == (Status.PENDING_NEW, new.order_id)
    retry = replace(a, new.order_id, 11, "165.00", coid="same-2")
    assert (await handlers.replace_order(retry, order_deps)).order_id == same.order_id
    await eventually(lambda: order_is(order_deps, a, same.order_id, Status.NEW), "the replacement that changed nothing")
    assert (await handlers.replace_order(retry, order_deps)).order_id == same.order_id
    # And the same values once more, as a new request to the working order: refused.
    with pytest.raises(model.ReplaceChangesNothing):
        await handlers.replace_order(replace(a, same.order_id, 11, "165.00"), order_deps)

    await handlers.cancel_order(a, same.order_id, order_deps)
    await eventually(lambda: order_is(order_deps, a, same.order_id, Status.CANCELLED), "the cancel")
    await eventually(lambda: _cash_is(checked_pool, a, held=D(0)), "the hold release")


async def _start_consumers(js, namespace, pool, deps) -> list[asyncio.Task]:
    uow = luow(pool)
    return [asyncio.create_task(executions.consume(js, namespace, "ledger",
                                                   lambda ex: settlement.apply_execution(ex, uow))),
            asyncio.create_task(executions.consume(js, namespace, "orders",
                                                   lambda ex: lifecycle.apply_execution(ex, deps)))]


async def _stop(tasks) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_engine_refusing_the_replace_rejects_the_new_order(engine, order_deps, checked_pool, nats_conn,
                                                                 namespace):
    """The old order fills completely in the engine before the replace gets there (order_svc and
    the ledger have not applied the fill yet, their consumers being stopped): the engine refuses
    (CANCEL_REJECTED), the new order ends REJECTED, the reserve is released, the fill settles."""
    buyer, seller = acct("buyer"), acct("seller")
    await fund(checked_pool, buyer, cash="2000.00")
    await fund(checked_pool, seller, shares=(SYM, 10))
    old = await handlers.place_order(limit(buyer, Side.BUY, 10, "168.00"), order_deps)
    await handlers.place_order(limit(seller, Side.SELL, 10, "168.00"), order_deps)
    new = await handlers.replace_order(replace(buyer, old.order_id, 10, "169.00"), order_deps)
    assert new.status is Status.PENDING_NEW
    assert (await ledger.cash_balance(buyer, luow(checked_pool))).held == D("1690.00")  # 1680 + the 10.00 reserve
    with pytest.raises(model.OrderChangePending):  # one change at a time
        await handlers.replace_order(replace(buyer, old.order_id, 10, "170.00"), order_deps)
    with pytest.raises(model.OrderChangePending):
        await handlers.cancel_order(buyer, old.order_id, order_deps)
    # The replacing order, still being placed: to be asked again shortly, not refused for good.
    for change in (handlers.cancel_order(buyer, new.order_id, order_deps),
                   handlers.replace_order(replace(buyer, new.order_id, 10, "170.00"), order_deps)):
        with pytest.raises(model.OrderStillPending) as pending:
            await change
        assert (pending.value.code, pending.value.retry_after_seconds) == ("UNAVAILABLE", 0.05)

    tasks = await _start_consumers(nats_conn.jetstream(), namespace, checked_pool, order_deps)
    try:
        rejected = await eventually(lambda: order_is(order_deps, buyer, new.order_id, Status.REJECTED),
                                    "the refused replacement")
        assert rejected.reject_reason is RejectReason.ORDER_NOT_ACTIVE
        assert rejected.reject_message == ("the order being replaced has ended (it filled, expired or was cancelled "
                                           "before the engine came to the replace)")  # no engine code in it
        filled = await eventually(lambda: order_is(order_deps, buyer, old.order_id, Status.FILLED), "the fill")
        assert filled.replaced_by is None
        await eventually(lambda: _cash_is(checked_pool, buyer, held=D(0)), "the holds to resolve")
        await eventually(lambda: _shares_held(checked_pool, seller, 0), "the seller's hold to resolve")
        cash = await ledger.cash_balance(buyer, luow(checked_pool))
        assert (cash.total, cash.available) == (D("320.00"), D("320.00"))
        assert await holds(checked_pool, old.order_id, f"{new.order_id}:reserve") == {
            str(old.order_id): ("CAPTURED", D("1680.00")), f"{new.order_id}:reserve": ("RELEASED", D("10.00"))}
        async with checked_pool.acquire() as conn:
            t = await conn.fetchrow("SELECT status FROM ledger.hold_transfers WHERE to_hold_id = $1", str(new.order_id))
        assert t["status"] == "CANCELLED"
        assert await updates_of(checked_pool, new.order_id) == ["PENDING_NEW", "REJECTED"]
    finally:
        await _stop(tasks)


class _RejectedByTheOtherDriver:
    """HoldService as driver B of a replace sees it: its transfer goes through, but meanwhile
    driver A, whose own transfer the ledger refused, records the replacement REJECTED; then
    B's cancel of its transfer fails (the ledger restarting, or B killed before it)."""

    def __init__(self, holds, uow) -> None:
        self.holds, self.uow = holds, uow

    def __getattr__(self, name):
        return getattr(self.holds, name)

    async def transfer(self, from_hold_id, to_hold_id, order_id, *args):
        result = await self.holds.transfer(from_hold_id, to_hold_id, order_id, *args)
        async with self.uow() as u:  # driver A, meanwhile
            o = await u.orders.get(uuid.UUID(order_id), for_update=True)
            o.reject(RejectReason.INSUFFICIENT_FUNDS, "insufficient funds")
            await u.orders.save_transition(o, Status.PENDING_NEW, datetime.now(timezone.utc))
            await u.commit()
        return result

    async def cancel_transfer(self, to_hold_id):
        raise Unavailable("the ledger could not cancel the transfer: UNAVAILABLE")


async def test_a_transfer_left_to_a_rejected_replacement_is_cancelled_not_left_to_wedge_the_order(
        engine, order_deps, execution_consumers, checked_pool, namespace):
    """Round 14 review: two drivers of one replace (a client's retry and the recovery loop); the
    refused one records the replacement REJECTED, the other's transfer had gone through and its
    cancel failed. Nothing retried that cancel: the reserve stayed held, and the next replace
    of the order failed for ever (HOLD_TRANSFER_PENDING: one transfer from a hold at a time),
    leaving it neither replaceable nor cancellable. Now the reaper cancels the transfer of a
    rejected replacement's reserve, and the next replace cancels one without a reserve."""
    from dataclasses import replace as with_

    broken = with_(order_deps, holds=_RejectedByTheOtherDriver(order_deps.holds, order_deps.uow))
    up, down = acct("up"), acct("down")
    await fund(checked_pool, up, cash="1720.00")
    await fund(checked_pool, down, cash="1700.00")
    old_up = await handlers.place_order(limit(up, Side.BUY, 10, "170.00"), order_deps)
    old_down = await handlers.place_order(limit(down, Side.BUY, 10, "170.00"), order_deps)
    # Up in price: a reserve of 10.00 is held for the replacement; down in quantity: none.
    with pytest.raises(Unavailable):
        await handlers.replace_order(replace(up, old_up.order_id, 10, "171.00", coid="up-1"), broken)
    with pytest.raises(Unavailable):
        await handlers.replace_order(replace(down, old_down.order_id, 5, "170.00", coid="down-1"), broken)
    rejected_up = await handlers.replace_order(replace(up, old_up.order_id, 10, "171.00", coid="up-1"), order_deps)
    assert rejected_up.status is Status.REJECTED
    assert (await ledger.cash_balance(up, luow(checked_pool))).available == D("10.00")  # 10.00 of it reserved, stranded

    # The reaper checks the reserve (placed more than older_than ago) against its order.
    assert await handlers.reap_orphaned_holds(order_deps, older_than=0) >= 1
    assert await holds(checked_pool, f"{rejected_up.order_id}:reserve") == {
        f"{rejected_up.order_id}:reserve": ("RELEASED", D("10.00"))}
    assert (await ledger.cash_balance(up, luow(checked_pool))).available == D("20.00")

    # The next replaces go through, the one without a reserve cancelling the transfer first.
    working = []
    for account, old, qty, price in ((up, old_up, 10, "172.00"), (down, old_down, 5, "170.00")):
        new = await handlers.replace_order(replace(account, old.order_id, qty, price), order_deps)
        assert new.status is Status.PENDING_NEW and new.reject_reason is None
        await eventually(lambda: order_is(order_deps, account, new.order_id, Status.NEW), "the replacement to work")
        await eventually(lambda: order_is(order_deps, account, old.order_id, Status.CANCELLED), "the old order to end")
        working.append((account, new))
    await ledger_caught_up(execution_consumers, namespace)
    async with checked_pool.acquire() as conn:
        left = await conn.fetch("SELECT to_hold_id, status FROM ledger.hold_transfers WHERE account_id = ANY($1) "
                                "AND status = 'PENDING'", [up, down])
    assert left == []
    assert (await ledger.cash_balance(up, luow(checked_pool))).held == D("1720.00")
    assert (await ledger.cash_balance(down, luow(checked_pool))).held == D("850.00")
    for account, new in working:  # out of the book, which the next tests trade in
        await handlers.cancel_order(account, new.order_id, order_deps)
        await eventually(lambda: order_is(order_deps, account, new.order_id, Status.CANCELLED), "the cancel")
        await eventually(lambda: _cash_is(checked_pool, account, held=D(0)), "the hold release")


class _LedgerBehind:
    """HoldService while the ledger has not applied the execution that made the old order's hold
    (the old order a replacement order_svc saw confirmed first): the first transfer finds no
    hold; the ledger, asked to catch up with the executions in flight, then has it."""

    def __init__(self, holds) -> None:
        self.holds, self.waited = holds, []

    def __getattr__(self, name):
        return getattr(self.holds, name)

    async def transfer(self, from_hold_id, *args):
        if not self.waited:
            raise model.HoldNotYet(from_hold_id)
        return await self.holds.transfer(from_hold_id, *args)

    async def await_executions(self, account_id):
        self.waited.append(account_id)
        return True


async def test_a_replace_of_an_order_whose_hold_the_ledger_has_not_made_yet_waits_for_it(
        engine, order_deps, execution_consumers, checked_pool, namespace):
    """Acceptance round 15: a replace of a replacement order_svc had just seen confirmed, before
    the ledger had applied the same execution, answered UNAVAILABLE ("the ledger could not
    transfer hold ...: NOT_FOUND"), and then went through 2 s later by the recovery loop: the
    client believed the old order still stood. Now order_svc asks the ledger to catch up first.
    The ledger's own answer for a hold it lacks is checked for real; its being behind, then
    caught up, is played by a stand-in (the race itself is a few milliseconds wide)."""
    from dataclasses import replace as with_

    buyer = acct("behind")
    await fund(checked_pool, buyer, cash="2000.00")
    # The ledger's own answer for a hold it does not have is HoldNotYet (retry), not UNAVAILABLE.
    with pytest.raises(model.HoldNotYet) as not_yet:
        await order_deps.holds.transfer(str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4()), buyer, "USD",
                                        D("1"), D("0"))
    assert (not_yet.value.reason, not_yet.value.retry_after_seconds) == ("LEDGER_CATCHING_UP", 0.2)

    old = await handlers.place_order(limit(buyer, Side.BUY, 10, "168.00"), order_deps)
    behind = _LedgerBehind(order_deps.holds)
    new = await handlers.replace_order(replace(buyer, old.order_id, 10, "167.00"), with_(order_deps, holds=behind))
    assert behind.waited == [buyer] and new.status is Status.PENDING_NEW
    await eventually(lambda: order_is(order_deps, buyer, new.order_id, Status.NEW), "the replacement to work")
    await handlers.cancel_order(buyer, new.order_id, order_deps)
    await eventually(lambda: order_is(order_deps, buyer, new.order_id, Status.CANCELLED), "the cancel")
    await eventually(lambda: _cash_is(checked_pool, buyer, held=D(0)), "the hold release")


class _LedgerWithoutTheHold(_LedgerBehind):
    """A ledger that lacks the replaced order's hold for good: one restored alone from a backup
    older than that order. It says "retry" to AwaitExecutions, as the real one does for an
    account that holds anything (this one does)."""

    async def transfer(self, from_hold_id, *args):
        raise model.HoldNotYet(from_hold_id)

    async def await_executions(self, account_id):
        self.waited.append(account_id)
        return True


async def test_a_replace_whose_old_hold_the_ledger_lacks_for_good_is_rejected_not_retried_for_ever(
        engine, order_deps, execution_consumers, checked_pool, namespace, monkeypatch):
    """Round 15's review: HoldNotYet was retried by the recovery loop for ever, leaving the
    replacement PENDING_NEW for ever. Past HOLD_MISSING_GIVE_UP it is REJECTED INTERNAL,
    whatever AwaitExecutions says (round 16 review: the give-up first asked it, and it says
    "retry" for any account holding anything); the transfer never happened, so the old order
    stands with its hold."""
    from dataclasses import replace as with_

    buyer = acct("lost")
    await fund(checked_pool, buyer, cash="2000.00")
    old = await handlers.place_order(limit(buyer, Side.BUY, 10, "168.00"), order_deps)
    lost = with_(order_deps, holds=_LedgerWithoutTheHold(order_deps.holds))
    with pytest.raises(model.HoldNotYet):  # at first: UNAVAILABLE, retry
        await handlers.replace_order(replace(buyer, old.order_id, 10, "167.00"), lost)
    pending = await handlers.list_orders(buyer, SYM, [], 10, None, order_deps)
    new = next(o for o in pending if o.replaces == old.order_id)
    assert new.status is Status.PENDING_NEW
    with pytest.raises(model.HoldNotYet):  # still young: the recovery loop tries again
        await handlers.advance(new.order_id, lost)
    monkeypatch.setattr(handlers, "HOLD_MISSING_GIVE_UP", timedelta(0))
    ended = await handlers.advance(new.order_id, lost)
    assert (ended.status, ended.reject_reason) == (Status.REJECTED, RejectReason.INTERNAL)
    assert f"the ledger has no hold of order {old.order_id}" in ended.reject_message
    assert (await handlers.get_order(buyer, old.order_id, order_deps)).status is Status.NEW
    assert await _cash_is(checked_pool, buyer, held=D("1680.00"))
    await handlers.cancel_order(buyer, old.order_id, order_deps)
    await eventually(lambda: order_is(order_deps, buyer, old.order_id, Status.CANCELLED), "the cancel")
    await eventually(lambda: _cash_is(checked_pool, buyer, held=D(0)), "the hold release")


async def test_cancel_rejected_clears_the_cancel_request(engine, order_deps, checked_pool, nats_conn, namespace):
    """A cancel the engine refuses is not the order's rejection: the order keeps its state, the
    request is cleared (no OrderUpdate: customers do not see it), and it can be asked again."""
    js = nats_conn.jetstream()
    buyer, seller = acct("buyer"), acct("seller")
    await fund(checked_pool, buyer, cash="2000.00")
    await fund(checked_pool, seller, shares=(SYM, 10))
    # The engine fills the order before the cancel reaches it (consumers stopped meanwhile).
    o = await handlers.place_order(limit(buyer, Side.BUY, 10, "167.00"), order_deps)
    await handlers.place_order(limit(seller, Side.SELL, 10, "167.00"), order_deps)
    asked = await handlers.cancel_order(buyer, o.order_id, order_deps)
    assert asked.cancel_requested
    tasks = await _start_consumers(js, namespace, checked_pool, order_deps)
    try:
        async def cleared():
            x = await handlers.get_order(buyer, o.order_id, order_deps)
            return x if x.status is Status.FILLED and not x.cancel_requested else None
        done = await eventually(cleared, "the fill and the refused cancel")
        assert done.reject_reason is None
        assert await updates_of(checked_pool, o.order_id) == ["NEW", "FILLED"]
        async with checked_pool.acquire() as conn:  # the refusal left the ended order as it was
            filled_at = await conn.fetchval("SELECT updated_at FROM orders.updates WHERE order_id = $1 AND "
                                            "status = 'FILLED'", o.order_id)
        assert done.updated_at == filled_at
        # Asked again: ended, as it would have been between the fill and the refusal (round 16:
        # that window answered OK with the FILLED order). The window, held open by hand:
        with pytest.raises(model.OrderNotActive, match="already FILLED"):
            await handlers.cancel_order(buyer, o.order_id, order_deps)
        async with checked_pool.acquire() as conn:
            await conn.execute("UPDATE orders.orders SET cancel_requested = true WHERE order_id = $1", o.order_id)
        with pytest.raises(model.OrderNotActive, match="already FILLED"):
            await handlers.cancel_order(buyer, o.order_id, order_deps)
        async with checked_pool.acquire() as conn:
            await conn.execute("UPDATE orders.orders SET cancel_requested = false WHERE order_id = $1", o.order_id)

        async def ledger_applied():  # the ledger consumer runs at its own pace
            async with checked_pool.acquire() as conn:
                return await conn.fetchval("SELECT count(*) FROM ledger.executions WHERE type = 'CANCEL_REJECTED' "
                                           "AND order_id = $1", str(o.order_id))
        assert await eventually(ledger_applied, "the ledger to apply the refusal") == 1
        await eventually(lambda: _cash_is(checked_pool, buyer, held=D(0)), "the hold to resolve")
        await eventually(lambda: _shares_held(checked_pool, seller, 0), "the seller's hold to resolve")

        # A live order whose cancel was refused (a refusal from the engine, here written by hand
        # on a symbol without an engine) can be cancelled again, under a new command id.
        live = await handlers.place_order(limit(buyer, Side.BUY, 1, "187.00", symbol="AAPL"), order_deps)
        await handlers.cancel_order(buyer, live.order_id, order_deps)
        ex = matching_pb2.Execution(execution_id=f"AAPL:refused-{uuid.uuid4().hex[:8]}:0", symbol="AAPL",
                                    type=matching_pb2.EXECUTION_TYPE_CANCEL_REJECTED, order_id=str(live.order_id),
                                    account_id=buyer, reason="UNKNOWN_ORDER")
        ex.time.FromDatetime(datetime.now(timezone.utc))
        await js.publish(bus.subject(namespace, "executions", "AAPL"), ex.SerializeToString(),
                         headers={"Nats-Msg-Id": ex.execution_id})

        async def not_requested():
            x = await handlers.get_order(buyer, live.order_id, order_deps)
            return x if not x.cancel_requested else None
        still = await eventually(not_requested, "the cancel request to clear")
        assert still.status is Status.NEW
        # Neither the request nor its refusal is a change a customer is sent: updated_at stays
        # the last update's (round 16: it moved twice with no OrderUpdate).
        assert still.updated_at == live.updated_at
        assert await updates_of(checked_pool, live.order_id) == ["NEW"]
        await handlers.cancel_order(buyer, live.order_id, order_deps)
        async with checked_pool.acquire() as conn:
            ids = [r["msg_id"] for r in await conn.fetch(
                "SELECT msg_id FROM orders.outbox WHERE msg_id LIKE $1 ORDER BY id", f"{live.order_id}:cancel%")]
        assert len(ids) == 2 and ids[0] == f"{live.order_id}:cancel" and ids[1] != ids[0]
    finally:
        await _stop(tasks)


async def test_session_close_expires_day_orders_not_gtc(engine, order_deps, execution_consumers, checked_pool,
                                                        database_url, namespace, nats_conn, acceptances):
    a = acct()
    await fund(checked_pool, a, cash="1000.00")
    day = await handlers.place_order(limit(a, Side.BUY, 2, "150.00", tif=TimeInForce.DAY), order_deps)
    gtc = await handlers.place_order(limit(a, Side.BUY, 3, "150.00"), order_deps)
    await eventually(lambda: acceptances.seen(gtc.order_id), "both orders to rest")
    env = {**os.environ, "DATABASE_URL": database_url, "STOCKMESH_NAMESPACE": namespace}
    today = calendar.trading_day(datetime.now(timezone.utc))  # the orders' day: a close of an earlier one leaves them
    cmd = [sys.executable, "-m", "meshkit.cli", "session", "close", "--date", today.isoformat()]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "symbols queued" in out.stdout
    expired = await eventually(lambda: order_is(order_deps, a, day.order_id, Status.EXPIRED), "the DAY order to expire")
    assert expired.end_reason is EndReason.SESSION_CLOSE  # and so it reads on the wire:
    from matching_svc.entrypoints.grpc_server import EngineControlServicer
    from stockmesh.matching.v1 import engine_control_service_pb2 as ec

    status = await EngineControlServicer(engine).GetEngineStatus(ec.GetEngineStatusRequest(), None)
    assert {x.symbol: x.last_closed_day for x in status.symbols}[SYM] == today.isoformat()  # `engine status` shows it
    assert mapping.order_to_proto(expired).end_message == "the day order expired at the close of the trading session"
    await eventually(lambda: _cash_is(checked_pool, a, held=D("450.00")), "its hold to be released")
    assert (await handlers.get_order(a, gtc.order_id, order_deps)).status is Status.NEW
    assert await holds(checked_pool, day.order_id, gtc.order_id) == {
        str(day.order_id): ("RELEASED", D("300.00")), str(gtc.order_id): ("PENDING", D("450.00"))}
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "nothing queued" in again.stdout
    # A DAY order placed since (an always-open market takes them) is of the next session, and
    # the message says how to end it (acceptance round 12: it looked as if it outlived its day).
    assert f"`stockmesh session close --date {today + timedelta(days=1)}` ends them" in again.stdout, again.stdout
    earlier = subprocess.run([*cmd[:-1], str(today - timedelta(days=3))], env=env, capture_output=True, text=True,
                             timeout=60)  # a close of an earlier day would end nothing more
    assert earlier.returncode == 0, earlier.stderr
    assert f"nothing queued: the session of {today} was closed since" in earlier.stdout
    async with checked_pool.acquire() as conn:
        n = await conn.fetchval("SELECT count(*) FROM orders.outbox WHERE msg_id = $1", f"close:{today}:{SYM}")
        payload = await conn.fetchval("SELECT payload FROM orders.outbox WHERE msg_id = $1", f"close:{today}:{SYM}")
        queued = matching_pb2.EngineCommand.FromString(payload).session_close.queued_at  # on order_svc's clock
        assert abs(queued.ToDatetime(timezone.utc) - datetime.now(timezone.utc)) < timedelta(minutes=5), queued
        assert not await conn.fetchval("SELECT count(*) FROM orders.outbox WHERE msg_id = $1",
                                       f"close:{today - timedelta(days=3)}:{SYM}")
    assert n == 1
    await handlers.cancel_order(a, gtc.order_id, order_deps)
    cancelled = await eventually(lambda: order_is(order_deps, a, gtc.order_id, Status.CANCELLED), "the cancel")
    assert cancelled.end_reason is EndReason.CUSTOMER_CANCEL
    # The account's update stream carries each end's reason with the change that ended the order.
    async with checked_pool.acquire() as conn:
        ends = [(o.order_id, o.status, o.end_reason) for _, o, _ in await OrderRepository(conn).updates_after(a, 0, 100)]
    assert [e for e in ends if e[1] in (Status.EXPIRED, Status.CANCELLED)] == [
        (day.order_id, Status.EXPIRED, EndReason.SESSION_CLOSE), (gtc.order_id, Status.CANCELLED, EndReason.CUSTOMER_CANCEL)]
    assert {e[2] for e in ends if e[1] is Status.NEW} == {None}


class _FeedNotYetHalted:
    """The price feed as an order_svc replica sees it just before the halt reaches it."""

    def __init__(self, quotes) -> None:
        self.quotes = quotes

    async def touch(self, symbol: str):
        t = await self.quotes.touch(symbol)
        return type(t)(t.bid, t.ask, t.last, False)


async def test_halt_refuses_orders_and_replaces_keeps_cancels_and_resume_trades_again(
        engine, order_deps, execution_consumers, checked_pool, namespace, acceptances):
    import dataclasses

    from matching_svc.entrypoints.grpc_server import EngineControlServicer
    from meshkit.errors import InvalidArgument
    from stockmesh.matching.v1 import engine_control_service_pb2 as ec

    control = EngineControlServicer(engine)
    s, b = acct("halt-s"), acct("halt-b")
    await fund(checked_pool, s, shares=(SYM, 20))
    await fund(checked_pool, b, cash="10000.00")
    resting = await handlers.place_order(limit(s, Side.SELL, 10, "180.00"), order_deps)
    other = await handlers.place_order(limit(s, Side.SELL, 5, "181.00"), order_deps)
    for o in (resting, other):
        await eventually(lambda o=o: acceptances.seen(o.order_id), "accepted")

    with pytest.raises(InvalidArgument):
        await control.HaltSymbol(ec.HaltSymbolRequest(symbol="NOPE"), None)
    with pytest.raises(InvalidArgument):
        await control.HaltSymbol(ec.HaltSymbolRequest(symbol=SYM, reason="x" * 201), None)
    await control.HaltSymbol(ec.HaltSymbolRequest(symbol=SYM, reason="news pending"), None)

    async def halted(flag: bool) -> bool:
        return (await order_deps.quotes.touch(SYM)).halted is flag

    await eventually(lambda: halted(True), "the feed to say GOOGL is halted")
    status = await control.GetEngineStatus(ec.GetEngineStatusRequest(), None)
    assert {x.symbol: x.halted for x in status.symbols}[SYM] is True

    # order_svc refuses at once (no hold placed), a buy and a replace alike.
    buy = await handlers.place_order(limit(b, Side.BUY, 5, "180.00"), order_deps)
    assert (buy.status, buy.reject_reason) == (Status.REJECTED, RejectReason.SYMBOL_HALTED)
    new = await handlers.replace_order(replace(s, resting.order_id, 10, "179.00"), order_deps)
    assert (new.status, new.reject_reason) == (Status.REJECTED, RejectReason.SYMBOL_HALTED)

    # An order that passed order_svc's check just before the halt reached it: the engine
    # refuses it (sequenced after the halt), and its hold is released.
    late_deps = dataclasses.replace(order_deps, quotes=_FeedNotYetHalted(order_deps.quotes))
    late = await handlers.place_order(limit(b, Side.BUY, 5, "180.00"), late_deps)
    assert late.status in (Status.PENDING_NEW, Status.NEW)
    late = await eventually(lambda: order_is(order_deps, b, late.order_id, Status.REJECTED), "the engine's refusal")
    assert late.reject_reason is RejectReason.SYMBOL_HALTED and late.reject_message == "trading in this symbol is halted"
    await ledger_caught_up(execution_consumers, namespace)
    assert (await holds(checked_pool, late.hold_id))[str(late.hold_id)][0] == "RELEASED"

    # Cancels still work while halted.
    await handlers.cancel_order(s, other.order_id, order_deps)
    await eventually(lambda: order_is(order_deps, s, other.order_id, Status.CANCELLED), "the cancel")

    await control.ResumeSymbol(ec.ResumeSymbolRequest(symbol=SYM), None)
    await eventually(lambda: halted(False), "the feed to say GOOGL trades again")
    buy = await handlers.place_order(limit(b, Side.BUY, 10, "180.00"), order_deps)
    assert buy.status in (Status.PENDING_NEW, Status.NEW)
    await eventually(lambda: order_is(order_deps, b, buy.order_id, Status.FILLED), "the fill after resuming")
    await eventually(lambda: order_is(order_deps, s, resting.order_id, Status.FILLED), "the resting sell filled")
    await ledger_caught_up(execution_consumers, namespace)


async def test_published_rows_of_ended_orders_and_closes_are_pruned_after_the_retention(
        engine, order_deps, execution_consumers, checked_pool, database_url, nats_conn, namespace, acceptances):
    from prometheus_client import REGISTRY

    from order_svc.adapters.outbox import OutboxRelay
    from order_svc.adapters.repository import CLOSE_KEPT

    a = acct()
    await fund(checked_pool, a, cash="1000.00")
    replaced = await handlers.place_order(limit(a, Side.BUY, 1, "150.00"), order_deps)
    new = await handlers.replace_order(replace(a, replaced.order_id, 1, "151.00"), order_deps)
    await eventually(lambda: order_is(order_deps, a, new.order_id, Status.NEW), "the replacement to work")
    cancelled = await handlers.place_order(limit(a, Side.BUY, 1, "150.00"), order_deps)
    await eventually(lambda: acceptances.seen(cancelled.order_id), "it to rest")
    mystery = f"mystery-{uuid.uuid4().hex}"  # names no order: kept, whatever its age
    close = f"close:2020-01-06:{uuid.uuid4().hex[:8]}"
    recent_close = f"close:2020-01-07:{uuid.uuid4().hex[:8]}"  # within the session loop's reach
    async with checked_pool.acquire() as conn:
        for msg_id in (close, recent_close, mystery):
            await conn.execute("INSERT INTO orders.outbox (subject, msg_id, payload, published_at) "
                               "VALUES ('nowhere', $1, '', now())", msg_id)
    await handlers.cancel_order(a, cancelled.order_id, order_deps)
    await eventually(lambda: order_is(order_deps, a, cancelled.order_id, Status.CANCELLED), "the cancel")

    ids = [str(replaced.order_id), f"{new.order_id}:replace", str(cancelled.order_id), close, recent_close, mystery,
           f"{cancelled.order_id}:cancel"]
    old = ids[:-1]  # the cancel stays recent: the scan ends there

    async def published() -> bool:
        async with checked_pool.acquire() as conn:
            return await conn.fetchval("SELECT count(*) FROM orders.outbox WHERE msg_id = ANY($1) "
                                       "AND published_at IS NOT NULL", ids) == len(ids)
    await eventually(published, "the relay to publish them")
    async with checked_pool.acquire() as conn:
        await conn.execute("UPDATE orders.outbox SET published_at = now() - interval '2 hours' "
                           "WHERE msg_id = ANY($1)", old)
        await conn.execute("UPDATE orders.outbox SET published_at = now() - $2::interval WHERE msg_id = $1",
                           close, CLOSE_KEPT + timedelta(hours=1))
        first = await conn.fetchval("SELECT min(id) FROM orders.outbox WHERE msg_id = ANY($1)", ids)

    pruned = lambda: REGISTRY.get_sample_value("stockmesh_outbox_pruned_total") or 0  # noqa: E731
    before = pruned()
    # Two rows a batch, so the scan goes on over batches. It starts after the rows this
    # database had before ours: all the session's, all recent (a scan from the oldest row
    # would stop at the first of them).
    hour = timedelta(hours=1)
    relay = OutboxRelay(database_url, nats_conn.jetstream(), retention=hour, prune_batch=2)
    conn = await asyncpg.connect(database_url)
    try:
        deleted, resume = await relay.prune_scan(conn, hour, first - 1)
        recent = await conn.fetchval("SELECT id FROM orders.outbox WHERE msg_id = $1", ids[-1])
        left = {r["msg_id"] for r in await conn.fetch("SELECT msg_id FROM orders.outbox WHERE msg_id = ANY($1)", ids)}
        # The next scan of new rows starts at the first row still too recent, and finds nothing yet.
        assert resume == recent - 1
        assert await relay.prune_scan(conn, hour, resume) == (0, resume)
    finally:
        await conn.close()
    # Kept: the live replacement's replace (a pending replace is told by it), a row naming no
    # order, a row published within the retention, and a close the session loop may still ask
    # for (CLOSE_KEPT, whatever the retention). Gone: the ended orders' and the close older than that.
    assert left == {f"{new.order_id}:replace", recent_close, mystery, f"{cancelled.order_id}:cancel"}
    assert deleted == 3 and pruned() - before == 3
    await handlers.cancel_order(a, new.order_id, order_deps)
    await eventually(lambda: order_is(order_deps, a, new.order_id, Status.CANCELLED), "the last cancel")


async def _no_hold_of(pool, order_id) -> bool:
    """Neither a hold nor a ledger event names the order: nothing was ever held for it."""
    async with pool.acquire() as conn:
        return not await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM ledger.holds WHERE order_id = $1) "
            "OR EXISTS (SELECT 1 FROM audit.events WHERE stream LIKE 'ledger:%' AND payload::jsonb ->> 'orderId' = $1)",
            str(order_id))


def _place_as(account: str, coid: str, qty: int, price: str) -> OrderRequest:
    return OrderRequest(account, coid, SYM, Side.BUY, OrderType.LIMIT, qty, D(price), None, TimeInForce.GTC)


async def test_a_replacements_client_order_id_reused_by_a_placement_holds_nothing(
        engine, order_deps, execution_consumers, checked_pool, namespace):
    """Round 27 (F1, case a): a replacement's hold is made by a transfer, which carried no client
    key, so a PlaceOrder reusing the replacement's client_order_id with other parameters placed
    a real hold (taking cash a concurrent order of the account needed), then gave it back once
    the order's insert found the id taken. Now TransferHold carries the key and the ledger keeps
    it for the replacement: the placement is refused by its hold statement, holding nothing,
    while the replace waits for the engine and after."""
    a = acct()
    await fund(checked_pool, a, cash="5000.00")
    old = await handlers.place_order(limit(a, Side.BUY, 10, "165.00"), order_deps)
    req = replace(a, old.order_id, 10, "166.00", coid="rep-reused")
    new = await handlers.replace_order(req, order_deps)
    reuse = _place_as(a, "rep-reused", 3, "166.00")
    would_be = model.order_id_for(a, reuse.client_order_id, reuse.fingerprint())
    with pytest.raises(model.DuplicateClientOrderId) as err:  # the transfer recorded, the engine not yet heard
        await handlers.place_order(reuse, order_deps)
    assert err.value.metadata == {"clientOrderId": "rep-reused", "orderId": str(new.order_id)}
    assert await _no_hold_of(checked_pool, would_be)
    await eventually(lambda: order_is(order_deps, a, new.order_id, Status.NEW), "the replacement to work")
    await ledger_caught_up(execution_consumers, namespace)
    before = await hold_footprint(checked_pool, a)
    with pytest.raises(model.DuplicateClientOrderId):
        await handlers.place_order(_place_as(a, "rep-reused", 4, "166.00"), order_deps)
    assert await hold_footprint(checked_pool, a) == before
    assert (await handlers.replace_order(req, order_deps)).order_id == new.order_id  # the retry: its order
    await handlers.cancel_order(a, new.order_id, order_deps)
    await eventually(lambda: order_is(order_deps, a, new.order_id, Status.CANCELLED), "the cancel")
    await ledger_caught_up(execution_consumers, namespace)


async def test_a_rejected_replacements_client_order_id_reused_by_a_placement_holds_nothing(
        engine, order_deps, execution_consumers, checked_pool, namespace):
    """Round 27 (F1): a replacement rejected by order_svc's checks (no transfer) or refused by the
    ledger (too little cash: no transfer recorded) keeps its client_order_id in the ledger too."""
    a = acct()
    await fund(checked_pool, a, cash="2000.00")
    old = await handlers.place_order(limit(a, Side.BUY, 10, "165.00"), order_deps)
    far = await handlers.replace_order(replace(a, old.order_id, 10, "1.00", coid="rep-far"), order_deps)
    assert (far.status, far.reject_reason) == (Status.REJECTED, RejectReason.PRICE_OUT_OF_COLLAR)
    poor = await handlers.replace_order(replace(a, old.order_id, 12, "170.00", coid="rep-poor"), order_deps)
    assert (poor.status, poor.reject_reason) == (Status.REJECTED, RejectReason.INSUFFICIENT_FUNDS)
    await ledger_caught_up(execution_consumers, namespace)
    before = await hold_footprint(checked_pool, a)
    for coid, rejected in (("rep-far", far), ("rep-poor", poor)):
        with pytest.raises(model.DuplicateClientOrderId) as err:
            await handlers.place_order(_place_as(a, coid, 1, "165.00"), order_deps)
        assert err.value.metadata == {"clientOrderId": coid, "orderId": str(rejected.order_id)}
    assert await hold_footprint(checked_pool, a) == before
    await handlers.cancel_order(a, old.order_id, order_deps)
    await eventually(lambda: order_is(order_deps, a, old.order_id, Status.CANCELLED), "the cancel")
    await ledger_caught_up(execution_consumers, namespace)


async def test_a_placement_reusing_a_replacements_id_before_its_transfer_holds_nothing(
        engine, order_deps, execution_consumers, checked_pool, namespace):
    """F1 for replacements between the replace's record (step 1) and its transfer (step 2): the
    ledger does not know the replacement's client_order_id yet, so a PlaceOrder reusing it with
    other parameters places a real hold, and gives it back once its insert finds the id taken.
    The ledger now keeps the id before the replacement is recorded (review of round 27)."""
    from dataclasses import replace as dc_replace
    a = acct()
    await fund(checked_pool, a, cash="5000.00")
    old = await handlers.place_order(limit(a, Side.BUY, 10, "165.00"), order_deps)
    gate, waiting = asyncio.Event(), asyncio.Event()

    class SlowTransfer:  # the ledger slow (or ACCOUNT_BUSY retried) for the transfer only
        def __getattr__(self, name):
            return getattr(order_deps.holds, name)

        async def transfer(self, *args, **kwargs):
            waiting.set()
            await gate.wait()
            return await order_deps.holds.transfer(*args, **kwargs)

    req = replace(a, old.order_id, 10, "166.00", coid="rep-window")
    replacing = asyncio.create_task(handlers.replace_order(req, dc_replace(order_deps, holds=SlowTransfer())))
    await asyncio.wait_for(waiting.wait(), 10)  # recorded PENDING_NEW, transfer not yet made
    before = await hold_footprint(checked_pool, a)
    reuse = _place_as(a, "rep-window", 3, "166.00")
    would_be = model.order_id_for(a, reuse.client_order_id, reuse.fingerprint())
    with pytest.raises(model.DuplicateClientOrderId):
        await handlers.place_order(reuse, order_deps)
    gate.set()
    new = await replacing
    after = await hold_footprint(checked_pool, a)
    events = [e for e in after[1] if e not in before[1]]
    assert await _no_hold_of(checked_pool, would_be), ("the reuse held something before being refused", events)
    await eventually(lambda: order_is(order_deps, a, new.order_id, Status.NEW), "the replacement")
    await handlers.cancel_order(a, new.order_id, order_deps)
    await eventually(lambda: order_is(order_deps, a, new.order_id, Status.CANCELLED), "the cancel")
    await ledger_caught_up(execution_consumers, namespace)
