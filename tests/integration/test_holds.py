"""Two-phase holds against a real PostgreSQL, through the handlers (and the gRPC servicers)."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import uuid
from decimal import Decimal

import asyncpg
import grpc
import pytest

from ledger_svc import bootstrap
from ledger_svc.domain import model
from ledger_svc.domain.model import HoldStatus
from ledger_svc.service_layer import commands, handlers
from ledger_svc.service_layer.unit_of_work import LedgerUnitOfWork
from meshkit import audit
from meshkit.server import create_server
from meshkit.status import error_info
from stockmesh.ledger.v1 import hold_service_pb2 as hpb, hold_service_pb2_grpc, ledger_pb2
from stockmesh.ledger.v1 import ledger_service_pb2 as lpb, ledger_service_pb2_grpc
from tests.integration.conftest import own_database_fixtures
from tests.support.holds import hold_footprint

pytestmark = pytest.mark.integration
D = Decimal

# A database, a namespace and a ledger of this module's own: its fills are applied straight to the
# ledger, never through the execution journal, and a settlement of the day in another module
# (test_settlement.py) run after it on a shared database took them and reported each as
# FILL_NOT_IN_JOURNAL. checked_pool (tests/conftest.py) checks the ledger's invariants on it after
# each test.
pool, database_url, namespace, ledger_addr = own_database_fixtures()


def account() -> str:
    return f"acct-{uuid.uuid4().hex[:10]}"


def hid() -> str:
    return f"h-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def uow(checked_pool):
    return lambda: LedgerUnitOfWork(checked_pool)


async def fund(uow, acct: str, cash: str | None = None, **shares: int) -> None:
    if cash is not None:
        await handlers.deposit(commands.Deposit(acct, D(cash), f"fund-{uuid.uuid4().hex}"), uow)
    for symbol, qty in shares.items():
        await handlers.credit_shares(commands.CreditShares(acct, symbol, D(qty), f"fund-{uuid.uuid4().hex}"), uow)


async def place(uow, acct: str, asset: str, amount: str, hold_id: str | None = None, order_id: str = "o-1"):
    return await handlers.place_hold(commands.PlaceHold(hold_id or hid(), acct, order_id, asset, D(amount)), uow)


async def capture(uow, hold_id: str, amount: str, capture_id: str | None = None, counter: str = ""):
    return await handlers.capture_hold(
        commands.CaptureHold(hold_id, capture_id or f"c-{uuid.uuid4().hex[:8]}", D(amount), counter), uow)


async def balance(uow, owner: str, asset: str) -> tuple[Decimal, Decimal, Decimal]:
    b = await handlers.book_balance(owner, asset, uow)
    return b.posted, b.held, b.available


async def _race(uow, pool, acct: str, asset: str, amount: str, funded_for: int, n: int = 1000):
    """n concurrent PlaceHolds of `amount`, while a watcher samples the book's balance."""
    samples: list[Decimal] = []
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            samples.append((await balance(uow, acct, asset))[2])
            await asyncio.sleep(0.005)

    async def one(i: int):
        try:
            return await place(uow, acct, asset, amount, hold_id=f"{acct}-{i}", order_id=f"o-{i}")
        except (model.InsufficientFunds, model.InsufficientShares) as exc:
            return exc

    watcher = asyncio.create_task(watch())
    results = await asyncio.gather(*(one(i) for i in range(n)))
    done.set()
    await watcher
    placed = [r for r in results if isinstance(r, model.Hold)]
    refused = [r for r in results if not isinstance(r, model.Hold)]
    assert len(placed) == funded_for and len(refused) == n - funded_for
    assert samples and min(samples) >= 0
    posted, held, available = await balance(uow, acct, asset)
    assert held == sum(h.amount for h in placed) == D(amount) * funded_for
    assert available == posted - held == 0
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM ledger.holds WHERE account_id = $1", acct) == funded_for
        assert await conn.fetchval(
            "SELECT count(*) FROM audit.events WHERE stream = $1 AND event_type = 'HOLD_PLACED'",
            f"ledger:{acct}") == funded_for
    return refused


async def test_1000_concurrent_cash_holds_funded_for_exactly_10(uow, checked_pool):
    acct = account()
    await fund(uow, acct, cash="123.45")  # 10 x 12.3450
    refused = await _race(uow, checked_pool, acct, "USD", "12.3450", funded_for=10)
    assert {(e.code, e.reason) for e in refused} == {("FAILED_PRECONDITION", "INSUFFICIENT_FUNDS")}


async def test_1000_concurrent_share_holds_funded_for_exactly_10(uow, checked_pool):
    acct = account()
    await fund(uow, acct, AAPL=70)  # 10 x 7 shares
    refused = await _race(uow, checked_pool, acct, "AAPL", "7", funded_for=10)
    assert {(e.code, e.reason) for e in refused} == {("FAILED_PRECONDITION", "INSUFFICIENT_SHARES")}


async def test_one_hold_id_100_times_concurrently_is_one_hold(uow, checked_pool):
    acct = account()
    await fund(uow, acct, cash="50.00")
    h = hid()
    replies = await asyncio.gather(*(place(uow, acct, "USD", "20", hold_id=h) for _ in range(100)))
    assert {(r.hold_id, r.amount, r.status, r.created_at) for r in replies} == {
        (h, D(20), HoldStatus.PENDING, replies[0].created_at)}
    assert await balance(uow, acct, "USD") == (D(50), D(20), D(30))
    with pytest.raises(model.DuplicateHoldId) as err:
        await place(uow, acct, "USD", "21", hold_id=h)
    assert (err.value.code, err.value.reason) == ("ALREADY_EXISTS", "DUPLICATE_HOLD_ID")
    with pytest.raises(model.DuplicateHoldId):
        await place(uow, acct, "USD", "20", hold_id=h, order_id="another-order")
    async with checked_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM ledger.holds WHERE account_id = $1", acct) == 1


async def test_partial_captures_across_two_accounts_move_cash_exactly(uow, checked_pool):
    buyer, seller = account(), account()
    await fund(uow, buyer, cash="1000.00")
    await fund(uow, seller, cash="5.00", MSFT=30)
    cash_hold = await place(uow, buyer, "USD", "400.1234")
    share_hold = await place(uow, seller, "MSFT", "30")
    # Three fills: 10 @ 13.3333, 10 @ 13.3334, 5 @ 13.3300 (4-place prices).
    for i, (qty, cost) in enumerate([(10, "133.3330"), (10, "133.3340"), (5, "66.6500")]):
        await capture(uow, cash_hold.hold_id, cost, capture_id=f"exec-{i}", counter=seller)
        await capture(uow, share_hold.hold_id, str(qty), capture_id=f"exec-{i}", counter=buyer)
    spent = D("133.3330") + D("133.3340") + D("66.6500")
    assert await balance(uow, buyer, "USD") == (D(1000) - spent, D("400.1234") - spent, D(600) - D("0.1234"))
    assert await balance(uow, seller, "USD") == (D(5) + spent, D(0), D(5) + spent)
    assert await balance(uow, buyer, "MSFT") == (D(25), D(0), D(25))
    assert await balance(uow, seller, "MSFT") == (D(5), D(5), D(0))
    h = await handlers.get_hold(cash_hold.hold_id, uow)
    assert (h.captured, h.released, h.status) == (spent, D(0), HoldStatus.PENDING)
    async with checked_pool.acquire() as conn:
        kinds = await conn.fetch("SELECT kind, count(*) FROM ledger.entries WHERE account_id = $1 "
                                 "GROUP BY kind", buyer)
        assert dict((r[0], r[1]) for r in kinds) == {"DEPOSIT": 1, "HOLD_CAPTURE": 3}


async def test_a_capture_fully_using_the_hold_resolves_it_as_captured(uow, checked_pool):
    acct = account()
    await fund(uow, acct, cash="10")
    h = await place(uow, acct, "USD", "10")
    h = await capture(uow, h.hold_id, "10")  # to the clearing counter-account
    assert (h.status, h.captured, h.resolved_at is not None) == (HoldStatus.CAPTURED, D(10), True)
    assert await balance(uow, acct, "USD") == (D(0), D(0), D(0))
    again = await handlers.release_hold(commands.ReleaseHold(h.hold_id), uow)  # nothing left: unchanged
    assert (again.status, again.released, again.resolved_at) == (HoldStatus.CAPTURED, D(0), h.resolved_at)


async def test_release_after_partial_capture(uow, checked_pool):
    acct = account()
    await fund(uow, acct, cash="100")
    h = await place(uow, acct, "USD", "80")
    await capture(uow, h.hold_id, "30.5")
    h = await handlers.release_hold(commands.ReleaseHold(h.hold_id), uow)
    assert (h.captured, h.released, h.status) == (D("30.5"), D("49.5"), HoldStatus.RELEASED)
    assert h.resolved_at is not None
    assert await balance(uow, acct, "USD") == (D("69.5"), D(0), D("69.5"))
    # Releasing again is idempotent.
    again = await handlers.release_hold(commands.ReleaseHold(h.hold_id), uow)
    assert (again.released, again.status, again.resolved_at) == (D("49.5"), HoldStatus.RELEASED, h.resolved_at)
    assert await balance(uow, acct, "USD") == (D("69.5"), D(0), D("69.5"))
    async with checked_pool.acquire() as conn:
        events = [r[0] for r in await conn.fetch(
            "SELECT event_type FROM audit.events WHERE stream = $1 ORDER BY seq", f"ledger:{acct}")]
        assert events == ["DEPOSIT", "HOLD_PLACED", "HOLD_CAPTURED", "HOLD_RELEASED"]
        assert (await audit.verify(conn))[1] == []


async def test_capture_retry_is_idempotent(uow, checked_pool):
    acct, other = account(), account()
    await fund(uow, acct, cash="100")
    h = await place(uow, acct, "USD", "60")
    replies = await asyncio.gather(*(capture(uow, h.hold_id, "25", capture_id="fill-1", counter=other)
                                     for _ in range(20)))
    assert {(r.captured, r.status) for r in replies} == {(D(25), HoldStatus.PENDING)}
    assert await balance(uow, acct, "USD") == (D(75), D(35), D(40))
    assert await balance(uow, other, "USD") == (D(25), D(0), D(25))
    # Once resolved, a retry of an applied capture still answers with the hold.
    await capture(uow, h.hold_id, "35", capture_id="fill-2", counter=other)
    again = await capture(uow, h.hold_id, "25", capture_id="fill-1", counter=other)
    assert (again.captured, again.status) == (D(60), HoldStatus.CAPTURED)
    with pytest.raises(model.DuplicateCaptureId) as err:
        await capture(uow, h.hold_id, "26", capture_id="fill-1", counter=other)
    assert (err.value.code, err.value.reason) == ("ALREADY_EXISTS", "DUPLICATE_CAPTURE_ID")
    async with checked_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM ledger.hold_captures WHERE hold_id = $1", h.hold_id) == 2


async def test_capture_refusals(uow, checked_pool):
    acct = account()
    await fund(uow, acct, cash="100", TSLA=3)
    h = await place(uow, acct, "USD", "10")
    with pytest.raises(model.HoldExceeded) as err:
        await capture(uow, h.hold_id, "10.0001")
    assert (err.value.code, err.value.reason) == ("FAILED_PRECONDITION", "HOLD_EXCEEDED")
    await handlers.release_hold(commands.ReleaseHold(h.hold_id), uow)
    with pytest.raises(model.HoldResolved) as err:
        await capture(uow, h.hold_id, "1")
    assert (err.value.code, err.value.reason) == ("FAILED_PRECONDITION", "HOLD_RESOLVED")
    with pytest.raises(model.HoldNotFound) as err:
        await capture(uow, "no-such-hold", "1")
    assert (err.value.code, err.value.reason) == ("NOT_FOUND", "HOLD_NOT_FOUND")
    with pytest.raises(model.HoldNotFound):
        await handlers.release_hold(commands.ReleaseHold("no-such-hold"), uow)
    shares = await place(uow, acct, "TSLA", "3")
    with pytest.raises(model.InvalidArgument):
        await capture(uow, shares.hold_id, "1.5")
    with pytest.raises(model.InvalidArgument):
        await capture(uow, shares.hold_id, "1", counter=acct)
    assert await balance(uow, acct, "USD") == (D(100), D(0), D(100))
    assert await balance(uow, acct, "TSLA") == (D(3), D(3), D(0))


async def test_holds_on_books_that_never_existed_are_refused_and_leave_nothing_behind(uow, checked_pool):
    acct = account()
    with pytest.raises(model.InsufficientShares):
        await place(uow, acct, "NVDA", "1")
    with pytest.raises(model.InsufficientFunds):
        await handlers.withdraw(commands.Withdraw(acct, D(1), "w"), uow)  # creates, then rolls back, a book
    await fund(uow, acct, cash="5")  # the rolled-back book's id is not reused
    assert await balance(uow, acct, "USD") == (D(5), D(0), D(5))


async def test_crossed_captures_between_two_accounts_do_not_deadlock(uow, checked_pool):
    a, b = account(), account()
    await fund(uow, a, cash="500")
    await fund(uow, b, cash="500")
    ha, hb = await place(uow, a, "USD", "500"), await place(uow, b, "USD", "500")
    await asyncio.gather(*(capture(uow, (ha if i % 2 else hb).hold_id, "5", counter=(b if i % 2 else a))
                           for i in range(100)))
    assert await balance(uow, a, "USD") == (D(500), D(250), D(250))
    assert await balance(uow, b, "USD") == (D(500), D(250), D(250))


async def test_the_database_enforces_the_hold_rules(uow, checked_pool):
    acct = account()
    await fund(uow, acct, cash="100")
    h = await place(uow, acct, "USD", "10")
    await capture(uow, h.hold_id, "6")
    async with checked_pool.acquire() as conn:
        with pytest.raises(asyncpg.CheckViolationError) as err:
            await conn.execute("UPDATE ledger.holds SET released = 5 WHERE hold_id = $1", h.hold_id)
        assert err.value.constraint_name == "holds_resolved_within_amount"
        with pytest.raises(asyncpg.CheckViolationError) as err:
            await conn.execute("UPDATE ledger.holds SET status = 'CAPTURED', resolved_at = now() "
                               "WHERE hold_id = $1", h.hold_id)
        assert err.value.constraint_name == "holds_status_consistent"
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO ledger.holds (hold_id, account_id, book_id, order_id, asset, amount) "
                "SELECT 'zero', $1, book_id, 'o', 'USD', 0 FROM ledger.books WHERE owner = $1", acct)
        with pytest.raises(asyncpg.CheckViolationError, match="never decrease"):
            await conn.execute("UPDATE ledger.holds SET captured = 5 WHERE hold_id = $1", h.hold_id)
        with pytest.raises(asyncpg.CheckViolationError):  # available = posted - held >= 0
            await conn.execute("UPDATE ledger.balances SET held = posted + 1 WHERE book_id = "
                               "(SELECT book_id FROM ledger.holds WHERE hold_id = $1)", h.hold_id)
        await handlers.release_hold(commands.ReleaseHold(h.hold_id), uow)
        with pytest.raises(asyncpg.CheckViolationError, match="resolves once"):
            await conn.execute("UPDATE ledger.holds SET resolved_at = now() WHERE hold_id = $1", h.hold_id)
        with pytest.raises(asyncpg.PostgresError, match="not allowed"):
            await conn.execute("DELETE FROM ledger.holds WHERE hold_id = $1", h.hold_id)
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await conn.execute("UPDATE ledger.hold_captures SET amount = 1 WHERE hold_id = $1", h.hold_id)


# --- over gRPC ------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def ledger_channel(pool, **build_args):
    """A channel to the ledger's services on `pool` (bootstrap.build with `build_args`), in this process."""
    app = bootstrap.build(pool, **build_args)
    app.on_close.clear()  # the session pool outlives this server
    server, port, _ = await create_server("127.0.0.1:0", app)
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    await server.stop(None)


@pytest.fixture
async def channel(checked_pool):
    async with ledger_channel(checked_pool) as ch:
        yield ch


def as_account(acct: str) -> tuple[tuple[str, str]]:
    payload = base64.urlsafe_b64encode(json.dumps({"sub": acct}).encode()).decode().rstrip("=")
    return (("x-jwt-payload", payload),)


async def test_hold_service_validates_and_maps_errors(channel, uow):
    holds = hold_service_pb2_grpc.HoldServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await holds.PlaceHold(hpb.PlaceHoldRequest(account_id="$external", asset="aapl", amount="1.5"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, bad = error_info(err.value)
    assert info.reason == "INVALID_ARGUMENT"
    assert {v.field for v in bad.field_violations} == {"hold_id", "account_id", "order_id", "asset"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await holds.PlaceHold(hpb.PlaceHoldRequest(hold_id="h", account_id="a", order_id="o", asset="AAPL",
                                                   amount="1.5"))
    assert [v.field for v in error_info(err.value)[1].field_violations] == ["amount"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await holds.CaptureHold(hpb.CaptureHoldRequest(hold_id="h", amount="1e3"))
    assert {v.field for v in error_info(err.value)[1].field_violations} == {"capture_id", "amount"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await holds.GetHold(hpb.GetHoldRequest(hold_id="missing"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and error_info(err.value)[0].reason == "HOLD_NOT_FOUND"
    acct = account()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await holds.PlaceHold(hpb.PlaceHoldRequest(hold_id=hid(), account_id=acct, order_id="o", asset="USD",
                                                   amount="1.0001"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err.value)[0].reason == "INSUFFICIENT_FUNDS"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await holds.AwaitExecutions(hpb.AwaitExecutionsRequest(account_ids=[acct, "$external", ""]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error_info(err.value)[1].field_violations] == ["account_ids[1]", "account_ids[2]"]
    # A ledger without NATS (this one) has no consumers to wait for: every refusal stands.
    assert list((await holds.AwaitExecutions(hpb.AwaitExecutionsRequest(account_ids=[acct]))).retry_account_ids) == []


async def test_hold_lifecycle_and_list_holds_over_grpc(channel, uow):
    acct = account()
    await fund(uow, acct, cash="1000", AMZN=20)
    holds = hold_service_pb2_grpc.HoldServiceStub(channel)
    ledger = ledger_service_pb2_grpc.LedgerServiceStub(channel)
    cash = (await holds.PlaceHold(hpb.PlaceHoldRequest(
        hold_id="g-cash-" + acct, account_id=acct, order_id="o-1", asset="USD", amount="187.2525"))).hold
    assert (cash.amount, cash.captured, cash.status) == ("187.2525", "0.00", ledger_pb2.HOLD_STATUS_PENDING)
    shares = (await holds.PlaceHold(hpb.PlaceHoldRequest(
        hold_id="g-shares-" + acct, account_id=acct, order_id="o-2", asset="AMZN", amount="20"))).hold
    shares = (await holds.CaptureHold(hpb.CaptureHoldRequest(
        hold_id=shares.hold_id, capture_id="x1", amount="8"))).hold
    shares = (await holds.ReleaseHold(hpb.ReleaseHoldRequest(hold_id=shares.hold_id))).hold
    assert (shares.amount, shares.captured, shares.released, shares.status) == (
        "20", "8", "12", ledger_pb2.HOLD_STATUS_RELEASED)
    third = (await holds.PlaceHold(hpb.PlaceHoldRequest(
        hold_id="g-third-" + acct, account_id=acct, order_id="o-3", asset="USD", amount="1"))).hold
    third = (await holds.CaptureHold(hpb.CaptureHoldRequest(hold_id=third.hold_id, capture_id="x", amount="1"))).hold
    assert third.status == ledger_pb2.HOLD_STATUS_CAPTURED
    assert (await holds.GetHold(hpb.GetHoldRequest(hold_id=cash.hold_id))).hold == cash

    page1 = await ledger.ListHolds(lpb.ListHoldsRequest(page_size=2), metadata=as_account(acct))
    assert [h.hold_id for h in page1.holds] == [third.hold_id, shares.hold_id] and page1.next_page_token
    assert page1.holds[1] == shares
    page2 = await ledger.ListHolds(lpb.ListHoldsRequest(page_size=2, page_token=page1.next_page_token),
                                   metadata=as_account(acct))
    assert [h.hold_id for h in page2.holds] == [cash.hold_id] and page2.next_page_token == ""
    assert page2.holds[0].created_at.seconds > 0
    other = await ledger.ListHolds(lpb.ListHoldsRequest(), metadata=as_account(account()))
    assert list(other.holds) == []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ledger.ListHolds(lpb.ListHoldsRequest(page_size=-1, page_token="junk"), metadata=as_account(acct))
    assert {v.field for v in error_info(err.value)[1].field_violations} == {"page_size", "page_token"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ledger.ListHolds(lpb.ListHoldsRequest())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_cash_hold_larger_than_one_deposit_is_placed_for_an_account_that_has_the_cash(channel, uow):
    """Round 16: an order's largest cost (~1.05e17: the largest price times the largest
    quantity, with the collar) is above the most one deposit carries (1e15); the ledger refused
    such a hold as malformed, which PlaceOrder answered INTERNAL."""
    acct = account()
    for _ in range(3):
        await fund(uow, acct, cash="999999999999999.99")
    holds = hold_service_pb2_grpc.HoldServiceStub(channel)
    big = (await holds.PlaceHold(hpb.PlaceHoldRequest(
        hold_id=hid(), account_id=acct, order_id="o-big", asset="USD", amount="2500000000000000.0001"))).hold
    assert (big.amount, big.status) == ("2500000000000000.0001", ledger_pb2.HOLD_STATUS_PENDING)
    big = (await holds.CaptureHold(hpb.CaptureHoldRequest(
        hold_id=big.hold_id, capture_id="c", amount="1500000000000000.00", counter_account_id=account()))).hold
    assert big.captured == "1500000000000000.00"
    big = (await holds.ReleaseHold(hpb.ReleaseHoldRequest(hold_id=big.hold_id))).hold
    assert (big.released, big.status) == ("1000000000000000.0001", ledger_pb2.HOLD_STATUS_RELEASED)
    # Beyond what the account has: the business refusal, as for any hold.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await holds.PlaceHold(hpb.PlaceHoldRequest(hold_id=hid(), account_id=acct, order_id="o-more", asset="USD",
                                                   amount="105000000000000000.00"))
    assert (err.value.code(), error_info(err.value)[0].reason) == (grpc.StatusCode.FAILED_PRECONDITION,
                                                                   "INSUFFICIENT_FUNDS")


async def test_a_share_capture_outside_a_trade_moves_the_positions_with_the_books(channel, uow):
    """Round 16 code review 2: CaptureHold of shares to another account moved the books only;
    the receiver's later sale of them found no position (an assert), and the symbol's execution
    consumer retried it for ever, stopping every later execution of the symbol. Now the cost
    basis goes with the shares, once per capture; and a fill selling more than a position
    knows of takes the rest at zero cost (logged) instead of stopping."""
    from datetime import datetime, timezone

    from ledger_svc.service_layer import settlement
    from meshkit import calendar
    from meshkit.executions import FILL, Execution

    a, b, c = account(), account(), account()
    await handlers.credit_shares(commands.CreditShares(a, "XOM", D(5), f"in-{a}", D("100.00")), uow)
    holds = hold_service_pb2_grpc.HoldServiceStub(channel)
    h = (await holds.PlaceHold(hpb.PlaceHoldRequest(hold_id=hid(), account_id=a, order_id="o-x", asset="XOM",
                                                    amount="3"))).hold
    for _ in range(2):  # a retry moves nothing more
        await holds.CaptureHold(hpb.CaptureHoldRequest(hold_id=h.hold_id, capture_id="gift", amount="3",
                                                       counter_account_id=b))

    async def position(acct):
        async with uow() as u:
            p = await u.settlement.position(acct, "XOM")
        return p.quantity, p.cost
    assert await position(a) == (2, D("200.00")) and await position(b) == (3, D("300.00"))

    async def sell(seller, quantity, tag):
        await handlers.deposit(commands.Deposit(c, D("1000"), f"cash-{tag}-{c}"), uow)
        await handlers.place_hold(commands.PlaceHold(f"buy-{tag}", c, f"buy-{tag}", "USD", D("110") * quantity), uow)
        await handlers.place_hold(commands.PlaceHold(f"sell-{tag}", seller, f"sell-{tag}", "XOM", D(quantity)), uow)
        now = datetime.now(timezone.utc)
        return await settlement.apply_execution(Execution(
            execution_id=f"XOM:{tag}:{uuid.uuid4().hex[:6]}", symbol="XOM", type=FILL, order_id=f"buy-{tag}",
            account_id=c, side="BUY", counter_order_id=f"sell-{tag}", counter_account_id=seller, price=D("110.00"),
            quantity=quantity, leaves=0, counter_leaves=0, executed_at=now, trade_date=calendar.trading_day(now)), uow)
    assert await sell(b, 3, "b")  # the receiver sells what it was given
    assert await position(b) == (0, D(0)) and await position(c) == (3, D("330.00"))
    # A position that knows of fewer shares than its book holds (by hand here: no path left
    # makes one) sells them all the same.
    async with uow() as u:
        await u.conn.execute("UPDATE ledger.positions SET quantity = 1, cost = 100 WHERE account_id = $1", a)
        await u.commit()
    assert await sell(a, 2, "a")
    assert await position(a) == (0, D(0))


# --- many holds in one call (PlaceHolds; order_svc's GrpcHolds batches into it) -----------------

def _answer(result: hpb.PlaceHoldResult) -> tuple:
    if result.HasField("hold"):
        return ("hold", result.hold.hold_id, result.hold.amount)
    return ("error", result.error.code, result.error.reason)


async def test_a_client_key_is_carried_by_one_hold_of_the_account_ever(channel, uow, checked_pool):
    a, b = account(), account()
    await fund(uow, a, cash="100")
    await fund(uow, b, cash="100")
    holds = hold_service_pb2_grpc.HoldServiceStub(channel)
    h1, h2, h3 = hid(), hid(), hid()

    def req(hold_id: str, acct: str, amount: str, key: str) -> hpb.PlaceHoldRequest:
        return hpb.PlaceHoldRequest(hold_id=hold_id, account_id=acct, order_id=f"o-{hold_id}", asset="USD",
                                    amount=amount, client_key=key)

    reply = await holds.PlaceHolds(hpb.PlaceHoldsRequest(holds=[
        req(h1, a, "30", "coid-1"),     # placed, carries coid-1
        req(h1, a, "30", "coid-1"),     # a retry: the same hold
        req(h2, a, "10", "coid-1"),     # another hold under a's coid-1: refused, nothing held
        req(h3, b, "10", "coid-1"),     # b's own coid-1: placed
        req(hid(), a, "5", "x\ty"),     # not a key (a control character): INVALID_ARGUMENT
    ]))
    assert [_answer(r) for r in reply.results] == [
        ("hold", h1, "30.00"), ("hold", h1, "30.00"), ("error", "ALREADY_EXISTS", "DUPLICATE_CLIENT_KEY"),
        ("hold", h3, "10.00"), ("error", "INVALID_ARGUMENT", "INVALID_ARGUMENT")]
    assert dict(reply.results[2].error.metadata) == {"clientKey": "coid-1", "holdId": h1, "orderId": f"o-{h1}",
                                                          "holdStatus": "PENDING"}
    assert await balance(uow, a, "USD") == (D(100), D(30), D(70))
    # Resolved, the hold still carries its key: the key is never free again.
    await handlers.release_hold(commands.ReleaseHold(h1), uow)
    with pytest.raises(model.DuplicateClientKey):
        await handlers.place_hold(commands.PlaceHold(h2, a, "o-2", "USD", D(10), "coid-1"), uow)
    # Holds without a key are as before, and the database refuses a second carrier of a key.
    await handlers.place_hold(commands.PlaceHold(h2, a, "o-2", "USD", D(10)), uow)
    async with checked_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM ledger.holds WHERE account_id = $1", a) == 2
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("UPDATE ledger.holds SET client_key = 'coid-1' WHERE hold_id = $1", h2)


async def test_the_client_key_of_an_order_without_a_hold_is_kept_for_that_order(channel, uow, checked_pool):
    """Round 27 (F1): a key no hold carries is kept for its order (migration 0023): a hold refused
    for want of cash keeps its key, RegisterClientKeys keeps an order's (one rejected before any
    hold), TransferHold's client_key the replacing order's. A hold of another order asked under
    such a key is refused DUPLICATE_CLIENT_KEY naming that order (no hold: holdId empty), holding
    nothing; the same order's retry is placed. A kept key is not a hold: ListHolds and the
    balances do not show it."""
    a = account()
    await fund(uow, a, cash="100")
    holds = hold_service_pb2_grpc.HoldServiceStub(channel)

    def req(order: str, amount: str, key: str) -> hpb.PlaceHoldRequest:
        return hpb.PlaceHoldRequest(hold_id=order, account_id=a, order_id=order, asset="USD", amount=amount,
                                    client_key=key)

    poor, other, rejected, third = hid(), hid(), hid(), hid()
    reply = await holds.PlaceHolds(hpb.PlaceHoldsRequest(holds=[
        req(poor, "500", "k-poor"),     # refused: the key stays poor's
        req(other, "10", "k-poor"),     # another order under it: refused, nothing held
        req(poor, "500", "k-poor"),     # poor's retry: refused for want of cash again, not for its key
    ]))
    assert [_answer(r) for r in reply.results] == [
        ("error", "FAILED_PRECONDITION", "INSUFFICIENT_FUNDS"), ("error", "ALREADY_EXISTS", "DUPLICATE_CLIENT_KEY"),
        ("error", "FAILED_PRECONDITION", "INSUFFICIENT_FUNDS")]
    assert dict(reply.results[1].error.metadata) == {"clientKey": "k-poor", "holdId": "", "orderId": poor,
                                                      "holdStatus": ""}
    keys = await holds.RegisterClientKeys(hpb.RegisterClientKeysRequest(keys=[
        hpb.ClientKey(account_id=a, client_key="k-rej", order_id=rejected),  # kept
        hpb.ClientKey(account_id=a, client_key="k-rej", order_id=rejected),  # again: still its own
        hpb.ClientKey(account_id=a, client_key="k-rej", order_id=third),     # another order: named
        hpb.ClientKey(account_id=a, client_key="k-poor", order_id=third),
    ]))
    assert [(r.holder_order_id, r.holder_hold_id, r.holder_hold_status) for r in keys.results] == [
        ("", "", ""), ("", "", ""), (rejected, "", ""), (poor, "", "")]
    placed = await handlers.place_hold(commands.PlaceHold(third, a, third, "USD", D(30), "k-third"), uow)
    taken = await holds.RegisterClientKeys(hpb.RegisterClientKeysRequest(keys=[
        hpb.ClientKey(account_id=a, client_key="k-third", order_id=other)]))
    assert [(r.holder_order_id, r.holder_hold_id, r.holder_hold_status) for r in taken.results] == [
        (third, third, "PENDING")]
    with pytest.raises(model.DuplicateClientKey) as err:
        await handlers.place_hold(commands.PlaceHold(other, a, other, "USD", D(10), "k-rej"), uow)
    assert err.value.metadata["orderId"] == rejected
    # A replacement's key, kept with its transfer: refused for another order as the engine is
    # still to replace the order.
    to_hold = hid()
    await holds.TransferHold(hpb.TransferHoldRequest(
        from_hold_id=placed.hold_id, to_hold_id=to_hold, order_id=to_hold, account_id=a, asset="USD",
        unit_amount="30", reserve_amount="0", client_key="k-new"))
    with pytest.raises(model.DuplicateClientKey) as err:
        await handlers.place_hold(commands.PlaceHold(other, a, other, "USD", D(10), "k-new"), uow)
    assert err.value.metadata["orderId"] == to_hold
    # The same order's hold under its own kept key, asked with answer_kept_key (order_svc's first
    # ask): KEPT, nothing held or read, once the cash is there too (explorer 4, F1); without it
    # (order_svc found no order recorded: the first attempt died before its record) it is placed.
    await fund(uow, a, cash="500")
    footprint = await hold_footprint(checked_pool, a)
    kept = await holds.PlaceHolds(hpb.PlaceHoldsRequest(holds=[
        hpb.PlaceHoldRequest(hold_id=poor, account_id=a, order_id=poor, asset="USD", amount="500",
                             client_key="k-poor", answer_kept_key=True),
        hpb.PlaceHoldRequest(hold_id=rejected, account_id=a, order_id=rejected, asset="USD", amount="5",
                             client_key="k-rej", answer_kept_key=True),
        hpb.PlaceHoldRequest(hold_id=other, account_id=a, order_id=other, asset="USD", amount="5",
                             client_key="k-rej", answer_kept_key=True)]))  # another order's key: taken
    assert [_answer(r) for r in kept.results] == [("error", "ALREADY_EXISTS", "CLIENT_KEY_KEPT")] * 2 + [
        ("error", "ALREADY_EXISTS", "DUPLICATE_CLIENT_KEY")]
    assert dict(kept.results[0].error.metadata) == {"clientKey": "k-poor", "orderId": poor}
    with pytest.raises(grpc.aio.AioRpcError) as rpc_err:
        await holds.PlaceHold(hpb.PlaceHoldRequest(hold_id=poor, account_id=a, order_id=poor, asset="USD",
                                                   amount="500", client_key="k-poor", answer_kept_key=True))
    assert rpc_err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert await hold_footprint(checked_pool, a) == footprint
    assert (await handlers.place_hold(commands.PlaceHold(poor, a, poor, "USD", D(500), "k-poor"), uow)).hold_id == poor
    listed = {r.hold.hold_id for r in await handlers.list_holds(a, None, 50, uow)}
    assert listed == {third, poor}
    assert await balance(uow, a, "USD") == (D(600), D(530), D(70))
    async with checked_pool.acquire() as conn:
        assert not await conn.fetchval(
            "SELECT count(*) FROM audit.events WHERE stream = $1 AND payload::jsonb ->> 'orderId' IN ($2, $3)",
            f"ledger:{a}", other, rejected)
    await handlers.cancel_transfer(to_hold, uow)
    for h in (third, poor):
        await handlers.release_hold(commands.ReleaseHold(h), uow)


async def test_place_holds_answers_each_hold_as_place_hold_would_in_the_order_given(channel, uow):
    a, b = account(), account()
    await fund(uow, a, cash="100", AAPL=5)
    holds = hold_service_pb2_grpc.HoldServiceStub(channel)
    h1, h2, h3, h4, h5 = (hid() for _ in range(5))

    def req(hold_id: str, acct: str, asset: str, amount: str, order_id: str = "o") -> hpb.PlaceHoldRequest:
        return hpb.PlaceHoldRequest(hold_id=hold_id, account_id=acct, order_id=order_id, asset=asset, amount=amount)

    reply = await holds.PlaceHolds(hpb.PlaceHoldsRequest(holds=[
        req(h3, b, "AAPL", "1"),        # b never had AAPL: refused
        req(h1, a, "USD", "60"),        # placed: 40 left
        req(h2, a, "USD", "50"),        # refused: only 40 available after h1
        req(h4, a, "AAPL", "5"),        # placed
        req("x", a, "aapl", "1.5"),     # malformed: INVALID_ARGUMENT for this one only
        req(h1, a, "USD", "60"),        # h1 again, same request: the same hold
        req(h1, a, "USD", "61"),        # h1 again, another amount: ALREADY_EXISTS
        req(h5, a, "USD", "40"),        # exactly what is left: placed
    ]))
    assert [_answer(r) for r in reply.results] == [
        ("error", "FAILED_PRECONDITION", "INSUFFICIENT_SHARES"),
        ("hold", h1, "60.00"),
        ("error", "FAILED_PRECONDITION", "INSUFFICIENT_FUNDS"),
        ("hold", h4, "5"),
        ("error", "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
        ("hold", h1, "60.00"),
        ("error", "ALREADY_EXISTS", "DUPLICATE_HOLD_ID"),
        ("hold", h5, "40.00"),
    ]
    assert reply.results[2].error.metadata["available"] == "40.00"  # money as the API shows it
    assert await balance(uow, a, "USD") == (D(100), D(100), D(0))
    assert await balance(uow, a, "AAPL") == (D(5), D(5), D(0))
    assert not (await holds.PlaceHolds(hpb.PlaceHoldsRequest())).results
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await holds.PlaceHolds(hpb.PlaceHoldsRequest(holds=[req(hid(), a, "USD", "1")] * 501))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error_info(err.value)[1].field_violations] == ["holds"]


async def test_unchecked_holds_page_by_a_cursor_that_neither_skips_nor_repeats_ties_of_created_at(channel, uow):
    """Round 22: ListUncheckedHolds goes on after a cursor (the last hold's created_at and
    hold_id), so order_svc's reaper is not held up by a page of holds it leaves unchecked. Holds
    placed in one transaction share their created_at: hold_id orders them, so a page ending
    among them is followed by the rest of them, none listed twice. Each hold says whether it is
    past the orphan age asked, in the same call."""
    a = account()
    await fund(uow, a, cash="100")
    holds = hold_service_pb2_grpc.HoldServiceStub(channel)
    mine = [f"tie-{uuid.uuid4().hex[:12]}" for _ in range(5)]
    reply = await holds.PlaceHolds(hpb.PlaceHoldsRequest(holds=[  # one transaction: one created_at
        hpb.PlaceHoldRequest(hold_id=h, account_id=a, order_id=h, asset="USD", amount="1") for h in mine]))
    placed = [r.hold for r in reply.results]
    assert len({(h.created_at.seconds, h.created_at.nanos) for h in placed}) == 1
    tie = placed[0].created_at

    seen: list[str] = []
    after = hpb.ListUncheckedHoldsRequest(after_created_at=tie, after_hold_id="")  # just before the ties
    while True:
        page = await holds.ListUncheckedHolds(hpb.ListUncheckedHoldsRequest(
            limit=2, after_created_at=after.after_created_at, after_hold_id=after.after_hold_id,
            orphan_age_seconds=3600))
        assert len(page.past_orphan_age) == len(page.holds)
        ties = [(h.hold_id, old) for h, old in zip(page.holds, page.past_orphan_age) if h.created_at == tie]
        seen += [h for h, _ in ties]
        assert not any(old for _, old in ties)  # placed just now: not an hour ago
        if len(ties) < len(page.holds) or len(page.holds) < 2:
            break
        after = hpb.ListUncheckedHoldsRequest(after_created_at=page.holds[-1].created_at,
                                              after_hold_id=page.holds[-1].hold_id)
    assert sorted(seen) == sorted(mine) and len(seen) == len(mine)  # each once, none skipped

    # Without a cursor or an orphan age, as before: oldest first, every hold past an age of 0.
    first = await holds.ListUncheckedHolds(hpb.ListUncheckedHoldsRequest(limit=1000))
    listed = [h.hold_id for h in first.holds]
    assert set(mine) <= set(listed) or len(listed) == 1000
    assert all(first.past_orphan_age) and len(first.past_orphan_age) == len(first.holds)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await holds.ListUncheckedHolds(hpb.ListUncheckedHoldsRequest(after_hold_id="h", orphan_age_seconds=-1))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in error_info(err.value)[1].field_violations} == {"after_hold_id", "orphan_age_seconds"}


async def test_a_batch_that_fails_as_a_whole_is_placed_one_hold_at_a_time(uow, monkeypatch):
    from ledger_svc.adapters.repository import LedgerRepository

    whole = LedgerRepository.place_holds

    async def deadlocked(self, holds, client_keys, lock_wait, answer_kept=None):
        # a batch deadlocks; a hold alone does not
        if len(holds) > 1:
            raise asyncpg.DeadlockDetectedError("deadlock detected")
        return await whole(self, holds, client_keys, lock_wait, answer_kept)

    monkeypatch.setattr(LedgerRepository, "place_holds", deadlocked)
    acct = account()
    await fund(uow, acct, cash="10")
    answers = await handlers.place_holds(
        [commands.PlaceHold(f"{acct}-{i}", acct, f"o-{i}", "USD", D(4)) for i in range(3)], uow)
    assert [type(a) for a in answers] == [model.Hold, model.Hold, model.InsufficientFunds]
    assert await balance(uow, acct, "USD") == (D(10), D(8), D(2))


async def test_an_account_held_by_another_transaction_holds_back_only_its_own_holds(uow, checked_pool,
                                                                                     monkeypatch):
    """Round 18: a batch of holds waited for as long as one account's lock was held by another
    transaction (a stuck one, a row locked by hand), and every placement with it. Now the batch
    waits at most its lock wait; the held account's holds are answered UNAVAILABLE ACCOUNT_BUSY,
    nothing held, and the others placed together again (round 19: not one statement each); later
    batches ask first whether it is still held, without waiting: answered at once while it is,
    placed as soon as it is not. Without the limit this call waits for the lock until wait_for
    ends it."""
    from ledger_svc.adapters.repository import LedgerRepository
    from meshkit.errors import Unavailable

    statements: list[int] = []  # the holds of each placing statement
    waits: dict[int, float] = {}  # and how long each may wait for a lock, by its size
    together = LedgerRepository.place_holds

    async def counted(self, holds, client_keys, lock_wait, answer_kept=None):
        statements.append(len(holds))
        waits[len(holds)] = lock_wait
        return await together(self, holds, client_keys, lock_wait, answer_kept)
    monkeypatch.setattr(LedgerRepository, "place_holds", counted)

    busy_acct, other = account(), account()
    await fund(uow, busy_acct, cash="100", AAPL=10)
    await fund(uow, other, cash="100")
    busy = handlers.BusyAccounts()
    cmds = [commands.PlaceHold(hid(), a, f"o-{i}", asset, D(amount)) for i, (a, asset, amount) in enumerate(
        [(other, "USD", "10"), (busy_acct, "USD", "10"), (other, "USD", "20"), (busy_acct, "AAPL", "1")])]
    async with checked_pool.acquire() as locker:
        async with locker.transaction():  # the busy account's lock (migration 0007), held meanwhile
            await locker.execute("SELECT 1 FROM audit.heads WHERE stream = $1 FOR UPDATE", f"ledger:{busy_acct}")
            answers = await asyncio.wait_for(handlers.place_holds(cmds, uow, busy, lock_wait=0.2), 60)
            assert [type(a) for a in answers] == [model.Hold, Unavailable, model.Hold, Unavailable]
            assert {(a.reason, a.metadata["accountId"], a.retry_after_seconds) for a in answers[1::2]} == {
                ("ACCOUNT_BUSY", busy_acct, 1.0)}
            assert busy_acct in busy and other not in busy
            # The four (timed out); then at once the other account's two together and the held
            # account's first alone (timed out: busy); its second answered without a statement.
            assert statements[0] == 4 and sorted(statements[1:]) == [1, 2], statements
            # The held account alone waits a moment more, not another lock wait (round 19 re-test:
            # the reply, everyone's, waited for it).
            assert waits == {4: 0.2, 2: 0.2, 1: handlers.HELD_RETRY_WAIT}
            again = await asyncio.wait_for(handlers.place_holds(cmds[1:2], uow, busy, lock_wait=0.2), 60)
            assert [a.reason for a in again] == ["ACCOUNT_BUSY"]
            assert len(statements) == 3  # found held before any placing statement: no wait
    assert await balance(uow, busy_acct, "USD") == (D(100), D(0), D(100))
    assert await balance(uow, busy_acct, "AAPL") == (D(10), D(0), D(10))
    assert await balance(uow, other, "USD") == (D(100), D(30), D(70))
    answers = await handlers.place_holds(cmds, uow, busy)  # free again: placed at once
    assert [a.hold_id for a in answers] == [c.hold_id for c in cmds]  # the first and third again, by id
    assert busy_acct not in busy
    assert await balance(uow, busy_acct, "USD") == (D(100), D(10), D(90))
    assert await balance(uow, other, "USD") == (D(100), D(30), D(70))


async def test_a_balance_row_held_by_another_transaction_holds_back_only_its_accounts_holds(uow, checked_pool):
    """The same when what is held is a book's balance row, not the account's lock (a row locked
    by hand): the account is found held by it."""
    from meshkit.errors import Unavailable

    held_acct, other = account(), account()
    await fund(uow, held_acct, cash="100")
    await fund(uow, other, cash="100")
    cmds = [commands.PlaceHold(hid(), a, f"o-{i}", "USD", D("10")) for i, a in enumerate([other, held_acct, other])]
    async with checked_pool.acquire() as locker:
        async with locker.transaction():
            await locker.execute("SELECT 1 FROM ledger.balances WHERE book_id = (SELECT book_id FROM ledger.books "
                                 "WHERE owner = $1 AND asset = 'USD') FOR UPDATE", held_acct)
            busy = handlers.BusyAccounts()
            answers = await asyncio.wait_for(handlers.place_holds(cmds, uow, busy, lock_wait=0.2), 60)
            assert held_acct in busy
    assert [type(a) for a in answers] == [model.Hold, Unavailable, model.Hold]
    assert answers[1].reason == "ACCOUNT_BUSY"
    assert await balance(uow, held_acct, "USD") == (D(100), D(0), D(100))
    assert await balance(uow, other, "USD") == (D(100), D(20), D(80))


async def test_the_held_accounts_check_sees_other_transactions_locks_and_not_its_own_kind(uow, checked_pool):
    """ledger.held_accounts: an account whose lock (its audit head) or a balance row another
    transaction holds is held; one another check is looking at (shared locks) is not (round 19
    diff review: checks taking exclusive locks saw each other, 352 of 600 wrongly)."""
    by_head, by_balance, free = account(), account(), account()
    for a in (by_head, by_balance, free):
        await fund(uow, a, cash="10")
    async with checked_pool.acquire() as locker:
        async with locker.transaction():
            await locker.execute("SELECT 1 FROM audit.heads WHERE stream = $1 FOR UPDATE", f"ledger:{by_head}")
            await locker.execute("SELECT 1 FROM ledger.balances WHERE book_id = (SELECT book_id FROM ledger.books "
                                 "WHERE owner = $1 AND asset = 'USD') FOR UPDATE", by_balance)
            await locker.execute("SELECT 1 FROM audit.heads WHERE stream = $1 FOR SHARE", f"ledger:{free}")
            async with uow().reads() as u:
                held = await u.ledger.held_accounts([by_head, by_balance, free, account()], timeout=5)
    assert held == {by_head, by_balance}


async def test_an_account_held_only_for_a_moment_is_placed_and_a_retry_of_a_placed_hold_is_never_busy(
        uow, checked_pool, monkeypatch):
    """Round 19 diff review: an account found held when a batch timed out (by a fill, for
    milliseconds) was answered ACCOUNT_BUSY; it now waits alone, at most the lock wait, and is
    placed once free. And a hold placed before under its id, asked again while its account is
    held, is answered as placed (EXISTS), not ACCOUNT_BUSY "nothing was held"."""
    from meshkit.errors import Unavailable

    moment, stuck, other = account(), account(), account()
    for a in (moment, stuck, other):
        await fund(uow, a, cash="100")
    placed_before = await place(uow, stuck, "USD", "5")
    cmds = [commands.PlaceHold(hid(), moment, "o-1", "USD", D(10)),
            commands.PlaceHold(placed_before.hold_id, stuck, placed_before.order_id, "USD", D(5)),  # a retry
            commands.PlaceHold(hid(), stuck, "o-3", "USD", D(7)),
            commands.PlaceHold(hid(), other, "o-4", "USD", D(20))]
    real_check = handlers.held_accounts_now
    async with checked_pool.acquire() as moment_locker, checked_pool.acquire() as stuck_locker:
        moment_tx, stuck_tx = moment_locker.transaction(), stuck_locker.transaction()
        await moment_tx.start()
        await stuck_tx.start()
        for conn, a in ((moment_locker, moment), (stuck_locker, stuck)):
            await conn.execute("SELECT 1 FROM audit.heads WHERE stream = $1 FOR UPDATE", f"ledger:{a}")

        async def check_then_free_the_moment(accounts, uow_factory, lock_wait):
            held = await real_check(accounts, uow_factory, lock_wait)
            await moment_tx.commit()  # the fill holding `moment` ends just after the check saw it
            return held
        monkeypatch.setattr(handlers, "held_accounts_now", check_then_free_the_moment)
        busy = handlers.BusyAccounts()
        answers = await asyncio.wait_for(handlers.place_holds(cmds, uow, busy, lock_wait=0.3), 60)
        await stuck_tx.rollback()
    assert [type(a) for a in answers] == [model.Hold, model.Hold, Unavailable, model.Hold]
    assert answers[1].hold_id == placed_before.hold_id and answers[2].reason == "ACCOUNT_BUSY"
    assert stuck in busy and moment not in busy
    assert await balance(uow, moment, "USD") == (D(100), D(10), D(90))
    assert await balance(uow, stuck, "USD") == (D(100), D(5), D(95))  # the retry's hold, once


async def test_concurrent_placements_share_place_holds_calls_and_never_overspend(channel, uow, checked_pool):
    from order_svc.adapters.holds import GrpcHolds
    from order_svc.domain.model import RejectReason

    acct = account()
    await fund(uow, acct, cash="123.45")  # 10 x 12.3450
    holds = GrpcHolds(channel)
    answers = await asyncio.gather(*(holds.place(f"{acct}-{i}", acct, f"o-{i}", "USD", D("12.345"))
                                     for i in range(200)))
    assert answers.count(None) == 10
    assert [a.reason for a in answers if a is not None] == [RejectReason.INSUFFICIENT_FUNDS] * 190
    # In the ledger's words, which the order's reject_message carries.
    assert {a.message for a in answers if a is not None} == {"available cash 0.00 is less than 12.345"}
    assert holds.calls < 200  # the holds of concurrent placements went together
    assert await balance(uow, acct, "USD") == (D("123.45"), D("123.45"), D(0))
    again = await asyncio.gather(*(holds.place(f"{acct}-{i}", acct, f"o-{i}", "USD", D("12.345"))
                                   for i in range(200)))
    assert again == answers  # the placed ones are found again by id; the refused ones refused again


async def test_an_unreachable_ledger_fails_every_waiting_placement_as_unavailable():
    from meshkit.errors import Unavailable
    from order_svc.adapters.holds import GrpcHolds

    async with grpc.aio.insecure_channel("127.0.0.1:1") as dead:
        holds = GrpcHolds(dead, timeout=0.5)
        answers = await asyncio.gather(*(holds.place(hid(), "a", "o", "USD", D(1)) for _ in range(5)),
                                       return_exceptions=True)
    assert all(isinstance(a, Unavailable) for a in answers), answers


async def test_every_call_is_counted_and_timed_by_method_and_code(ledger_addr):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from prometheus_client import REGISTRY

    def sample(name: str, method: str, **labels) -> float:
        return REGISTRY.get_sample_value(name, {"method": method, **labels}) or 0.0

    get_hold, check = "/stockmesh.ledger.v1.HoldService/GetHold", "/grpc.health.v1.Health/Check"

    def counts() -> tuple[float, ...]:
        return (sample("stockmesh_rpc_total", get_hold, code="NOT_FOUND"), sample("stockmesh_rpc_seconds_count", get_hold),
                sample("stockmesh_rpc_total", check, code="OK"), sample("stockmesh_rpc_seconds_count", check))

    before = counts()
    async with grpc.aio.insecure_channel(ledger_addr) as ch:
        stub = hold_service_pb2_grpc.HoldServiceStub(ch)
        for _ in range(3):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetHold(hpb.GetHoldRequest(hold_id=f"none-{uuid.uuid4().hex}"))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
    assert tuple(a - b for a, b in zip(counts(), before)) == (3, 3, 1, 1)


# --- a held account answered busy, over gRPC ------------------------------------------------------

LOCK_WAIT = 0.2  # the ledger's lock wait in these tests (LEDGER_LOCK_WAIT_SECONDS: 1 s)
GUARD = 60  # seconds: ends a call that waits for the lock (the old code's 30 s), never a measure


@pytest.fixture
async def quick_channel(checked_pool):
    """The ledger's services with a lock wait of LOCK_WAIT."""
    async with ledger_channel(checked_pool, lock_wait=LOCK_WAIT) as ch:
        yield ch


@contextlib.asynccontextmanager
async def row_held(pool, sql: str, *args):
    """A row locked by another transaction (`sql`: a SELECT ... FOR UPDATE), as by a stuck
    session or an operator, for the block; rolled back after it, whatever happens."""
    async with pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute(sql, *args)
            yield


def account_held(acct: str) -> tuple[str, str]:
    """row_held's arguments for the account's lock (its audit head, migration 0007)."""
    return "SELECT 1 FROM audit.heads WHERE stream = $1 FOR UPDATE", f"ledger:{acct}"


def hold_held(hold_id: str) -> tuple[str, str]:
    """row_held's arguments for the hold's row."""
    return "SELECT 1 FROM ledger.holds WHERE hold_id = $1 FOR UPDATE", hold_id


async def busy_then_once(pool, held: tuple[str, str], call, acct: str):
    """`call()` while `held` is locked by another transaction: UNAVAILABLE ACCOUNT_BUSY, the
    account named, RetryInfo 1 s, after the ledger's lock wait (before: the pool's 30 s command
    timeout, which GUARD outlasts); then, once free, the same call twice (a retry): what each
    answered."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    async with row_held(pool, *held):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(call(), GUARD)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
    info, _ = error_info(err.value)
    assert info is not None and (info.reason, dict(info.metadata)) == ("ACCOUNT_BUSY", {"accountId": acct})
    assert f"account {acct} is busy" in err.value.details(), err.value.details()
    [retry] = [d for d in rpc_status.from_call(err.value).details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    delay = error_details_pb2.RetryInfo()
    retry.Unpack(delay)
    assert delay.retry_delay.ToMilliseconds() == 1000
    return await call(), await call()


async def test_a_place_hold_of_a_held_account_is_busy_then_placed_once(quick_channel, uow, checked_pool):
    """PlaceHold alone waited for a held account as long as the lock was held (up to the pool's
    30 s); now as PlaceHolds answers it (a batch of one)."""
    acct = account()
    await fund(uow, acct, cash="100")
    stub = hold_service_pb2_grpc.HoldServiceStub(quick_channel)
    request = hpb.PlaceHoldRequest(hold_id=hid(), account_id=acct, order_id="o-1", asset="USD", amount="30")
    first, again = await busy_then_once(checked_pool, account_held(acct), lambda: stub.PlaceHold(request), acct)
    assert first.hold.hold_id == again.hold.hold_id == request.hold_id
    assert await balance(uow, acct, "USD") == (D(100), D(30), D(70))  # held once


async def test_a_deposit_to_a_held_account_is_busy_then_made_once(quick_channel, uow, checked_pool):
    """Deposit (public) waited up to the pool's 30 s for the account's lock, then failed INTERNAL."""
    acct = account()
    await fund(uow, acct, cash="100")
    stub = ledger_service_pb2_grpc.LedgerServiceStub(quick_channel)
    deposit = lpb.DepositRequest(amount="25.00", idempotency_key=f"d-{uuid.uuid4().hex}")
    first, again = await busy_then_once(
        checked_pool, account_held(acct), lambda: stub.Deposit(deposit, metadata=as_account(acct)), acct)
    assert first.cash.total == again.cash.total == "125.00"
    assert await balance(uow, acct, "USD") == (D(125), D(0), D(125))  # deposited once


async def test_a_withdrawal_from_a_held_cash_book_is_busy_then_made_once(quick_channel, uow, checked_pool):
    """Withdraw (public), with the account's cash balance row held rather than its lock: the
    wait bounds every statement of the call, not only the first."""
    acct = account()
    await fund(uow, acct, cash="100")
    stub = ledger_service_pb2_grpc.LedgerServiceStub(quick_channel)
    withdrawal = lpb.WithdrawRequest(amount="40.00", idempotency_key=f"w-{uuid.uuid4().hex}")
    cash_row = ("SELECT 1 FROM ledger.balances WHERE book_id = (SELECT book_id FROM ledger.books "
                "WHERE owner = $1 AND asset = 'USD') FOR UPDATE", acct)
    first, again = await busy_then_once(
        checked_pool, cash_row, lambda: stub.Withdraw(withdrawal, metadata=as_account(acct)), acct)
    assert first.cash.total == again.cash.total == "60.00"
    assert await balance(uow, acct, "USD") == (D(60), D(0), D(60))  # withdrawn once


async def test_a_capture_of_a_held_hold_is_busy_then_made_once(quick_channel, uow, checked_pool):
    """CaptureHold with the hold's row held: ACCOUNT_BUSY naming the hold's account (found from
    the hold), then captured once."""
    acct, counter = account(), account()
    await fund(uow, acct, cash="100")
    h = await place(uow, acct, "USD", "60")
    stub = hold_service_pb2_grpc.HoldServiceStub(quick_channel)
    capture = hpb.CaptureHoldRequest(hold_id=h.hold_id, capture_id="c-1", amount="20", counter_account_id=counter)
    first, again = await busy_then_once(checked_pool, hold_held(h.hold_id), lambda: stub.CaptureHold(capture), acct)
    assert first.hold.captured == again.hold.captured == "20.00"
    assert await balance(uow, acct, "USD") == (D(80), D(40), D(40))
    assert await balance(uow, counter, "USD") == (D(20), D(0), D(20))  # captured once


async def test_a_release_of_a_hold_of_a_held_account_is_busy_then_made_once(quick_channel, uow, checked_pool):
    """ReleaseHold with the account's lock held: ACCOUNT_BUSY naming it, then released once.
    order_svc releases holds from its placement saga and its reaper, which both ask again after
    UNAVAILABLE (the client's retry; the reaper's next round, the hold still unchecked)."""
    acct = account()
    await fund(uow, acct, cash="100")
    h = await place(uow, acct, "USD", "60")
    stub = hold_service_pb2_grpc.HoldServiceStub(quick_channel)
    release = hpb.ReleaseHoldRequest(hold_id=h.hold_id)
    first, again = await busy_then_once(checked_pool, account_held(acct), lambda: stub.ReleaseHold(release), acct)
    assert first.hold.released == again.hold.released == "60.00"
    assert await balance(uow, acct, "USD") == (D(100), D(0), D(100))


async def test_a_hold_transfer_from_a_held_hold_is_busy_then_made_once(quick_channel, uow, checked_pool):
    """TransferHold (ReplaceOrder's) with the old hold's row held: ACCOUNT_BUSY, nothing
    recorded, then recorded once, its reserve held once."""
    acct = account()
    await fund(uow, acct, cash="1000")
    old = await place(uow, acct, "USD", "500")  # 5 at 100.00
    stub = hold_service_pb2_grpc.HoldServiceStub(quick_channel)
    transfer = hpb.TransferHoldRequest(from_hold_id=old.hold_id, to_hold_id=hid(), order_id="o-2", account_id=acct,
                                       asset="USD", unit_amount="120", reserve_amount="100")
    first, again = await busy_then_once(checked_pool, hold_held(old.hold_id), lambda: stub.TransferHold(transfer), acct)
    assert first.transfer == again.transfer
    assert first.transfer.status == hpb.HOLD_TRANSFER_STATUS_PENDING
    assert await balance(uow, acct, "USD") == (D(1000), D(600), D(400))  # the reserve, once


async def test_a_hold_transfer_cancel_on_a_held_account_is_busy_then_made_once(quick_channel, uow, checked_pool):
    """CancelHoldTransfer with the account's lock held: ACCOUNT_BUSY naming the transfer's
    account, then cancelled once (its reserve released, the old hold kept)."""
    acct = account()
    await fund(uow, acct, cash="1000")
    old = await place(uow, acct, "USD", "500")
    to_hold = hid()
    await handlers.transfer_hold(commands.TransferHold(old.hold_id, to_hold, "o-2", acct, "USD", D(120), D(100)), uow)
    stub = hold_service_pb2_grpc.HoldServiceStub(quick_channel)
    cancel = hpb.CancelHoldTransferRequest(to_hold_id=to_hold)
    first, again = await busy_then_once(checked_pool, account_held(acct), lambda: stub.CancelHoldTransfer(cancel),
                                        acct)
    assert first.transfer.status == again.transfer.status == hpb.HOLD_TRANSFER_STATUS_CANCELLED
    assert await balance(uow, acct, "USD") == (D(1000), D(500), D(500))


async def test_a_replace_of_an_order_whose_account_the_ledger_finds_held_is_busy_then_replaced_once(
        quick_channel, order_deps, uow, checked_pool):
    """ReplaceOrder's hold transfer waited for the held account until order_svc's 5 s deadline,
    then answered a bare UNAVAILABLE; now the ledger's ACCOUNT_BUSY reaches the client as
    UNAVAILABLE ACCOUNT_BUSY with RetryInfo and the account, and the same request sent again
    replaces the order once."""
    from google.rpc import error_details_pb2

    from meshkit.errors import Unavailable
    from meshkit.status import to_rpc_status
    from order_svc.adapters.holds import GrpcHolds
    from order_svc.domain.model import OrderRequest, OrderType, Side, Status, TimeInForce
    from order_svc.service_layer import handlers as orders
    from order_svc.service_layer.handlers import ReplaceRequest

    order_deps.holds = GrpcHolds(quick_channel)
    acct = account()
    await fund(uow, acct, cash="1000.00")
    o = await orders.place_order(OrderRequest(
        account_id=acct, client_order_id=uuid.uuid4().hex, symbol="AAPL", side=Side.BUY, type=OrderType.LIMIT,
        quantity=2, limit_price=D("187.00"), stop_price=None, time_in_force=TimeInForce.GTC), order_deps)
    assert o.status is Status.NEW
    r = ReplaceRequest(account_id=acct, order_id=o.order_id, client_order_id=uuid.uuid4().hex, quantity=3,
                       limit_price=D("187.00"), stop_price=None)
    async with row_held(checked_pool, *account_held(acct)):
        with pytest.raises(Unavailable) as err:
            await asyncio.wait_for(orders.replace_order(r, order_deps), GUARD)
    busy = err.value
    assert (busy.code, busy.reason, busy.metadata, busy.retry_after_seconds) == (
        "UNAVAILABLE", "ACCOUNT_BUSY", {"accountId": acct}, 1.0)
    assert f"account {acct} is busy" in busy.message, busy.message
    assert [d for d in to_rpc_status(busy).details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    async with checked_pool.acquire() as conn:  # nothing recorded
        assert await conn.fetchval("SELECT count(*) FROM ledger.hold_transfers WHERE from_hold_id = $1",
                                   str(o.order_id)) == 0
    new, again = [await orders.replace_order(r, order_deps) for _ in range(2)]
    assert new.order_id == again.order_id and new.replaces == o.order_id
    async with checked_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM orders.orders WHERE replaces = $1", o.order_id) == 1
        assert await conn.fetchval("SELECT count(*) FROM ledger.hold_transfers WHERE from_hold_id = $1",
                                   str(o.order_id)) == 1
    assert (await balance(uow, acct, "USD"))[1] == D("561.00")  # 2 x 187.00, and the reserve for one more, once


async def test_the_reapers_release_of_a_held_accounts_hold_waits_for_its_next_round_and_the_rest_go_now(
        quick_channel, order_deps, uow, checked_pool):
    """order_svc's reaper gives back holds whose order was never recorded (ReleaseHold). One
    whose account is held answers ACCOUNT_BUSY (the ledger's reason passed on); the reaper leaves
    that hold unchecked for its next round and goes on with the rest: another account's orphan,
    placed after it, is released in the same round (round 22 review: the busy release ended the
    round, and every later round met it first, so nothing behind it was reaped while the account
    stayed held). Before the ledger's lock wait, the round waited out order_svc's 5 s deadline."""
    from order_svc.adapters.holds import GrpcHolds
    from order_svc.service_layer import handlers as orders

    order_deps.holds = GrpcHolds(quick_channel)
    acct, other = account(), account()
    await fund(uow, acct, cash="100")
    await fund(uow, other, cash="100")
    orphan = str(uuid.uuid4())  # a placement that died between its hold and its order
    await place(uow, acct, "USD", "30", hold_id=orphan, order_id=orphan)
    behind = str(uuid.uuid4())  # another, placed after it: later in the reaper's pages
    await place(uow, other, "USD", "40", hold_id=behind, order_id=behind)
    async with row_held(checked_pool, *account_held(acct)):
        await asyncio.wait_for(orders.reap_orphaned_holds(order_deps, older_than=0, orphan_age=0, page=1), GUARD)
    assert (await handlers.get_hold(behind, uow)).status is HoldStatus.RELEASED
    assert await balance(uow, other, "USD") == (D(100), D(0), D(100))
    assert (await handlers.get_hold(orphan, uow)).status is HoldStatus.PENDING  # left for the next round
    assert await balance(uow, acct, "USD") == (D(100), D(30), D(70))
    await orders.reap_orphaned_holds(order_deps, older_than=0, orphan_age=0)
    assert (await handlers.get_hold(orphan, uow)).status is HoldStatus.RELEASED
    assert await balance(uow, acct, "USD") == (D(100), D(0), D(100))
