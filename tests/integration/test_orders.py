"""Order placement against real PostgreSQL, the real ledger over gRPC and the project's NATS."""
from __future__ import annotations

import asyncio
import re
import time
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY

from ledger_svc.service_layer import commands, handlers as ledger
from ledger_svc.service_layer.unit_of_work import LedgerUnitOfWork
from meshkit import bus
from meshkit.errors import InvalidArgument, ResourceExhausted, Unavailable
from order_svc.domain.model import (DuplicateClientOrderId, OrderRequest, OrderType, RejectReason, Side, Status,
                                    TimeInForce, order_id_for)
from order_svc.entrypoints import mapping
from order_svc.service_layer import handlers
from stockmesh.common.v1 import common_pb2
from stockmesh.matching.v1 import matching_pb2
from stockmesh.order.v1 import order_service_pb2 as pb
from stockmesh.order.v1 import order_pb2
from tests.integration.conftest import own_database_fixtures
from tests.support.holds import hold_footprint
from tests.support.wait import eventually

pytestmark = pytest.mark.integration

# A database, a namespace and a ledger of this module's own: the reaper's test checks every
# unchecked hold of the ledger, oldest first, and other modules' holds placed straight in the
# ledger (test_holds_stateful, test_journal_trim, ...) look to it like placements still being retried:
# a page of 500 of them ended its round before it reached this test's.
pool, database_url, namespace, ledger_addr = own_database_fixtures()


def acct() -> str:
    return f"acct-{uuid.uuid4().hex[:10]}"


def limit_buy(account: str, coid: str, qty: int = 10, price: str = "187.25", symbol: str = "AAPL",
              side: Side = Side.BUY, type_: OrderType = OrderType.LIMIT) -> OrderRequest:
    return OrderRequest(account_id=account, client_order_id=coid, symbol=symbol, side=side, type=type_,
                        quantity=qty, limit_price=Decimal(price) if type_ is OrderType.LIMIT else None,
                        stop_price=None, time_in_force=TimeInForce.DAY)


async def place(req: OrderRequest, deps):
    """PlaceOrder as a client does it: UNAVAILABLE (here: the ledger slower than the hold
    deadline on a loaded machine) is retried with the same client order id."""
    for _ in range(20):
        try:
            return await handlers.place_order(req, deps)
        except Unavailable:
            await asyncio.sleep(0.5)
    return await handlers.place_order(req, deps)


async def deposit(pool, account: str, amount: str) -> None:
    await ledger.deposit(commands.Deposit(account, Decimal(amount), f"fund-{uuid.uuid4().hex}"),
                         lambda: LedgerUnitOfWork(pool))


async def cash(pool, account: str):
    return await ledger.cash_balance(account, lambda: LedgerUnitOfWork(pool))


async def test_1000_concurrent_buys_funded_for_10(order_deps, checked_pool):
    a = acct()
    await deposit(checked_pool, a, "18725.00")  # exactly 10 × 10 × 187.25
    orders = await asyncio.gather(*(place(limit_buy(a, f"c{i}"), order_deps) for i in range(1000)))
    accepted = [o for o in orders if o.status is Status.NEW]
    rejected = [o for o in orders if o.status is Status.REJECTED]
    assert len(accepted) == 10 and len(rejected) == 990
    assert {o.reject_reason for o in rejected} == {RejectReason.INSUFFICIENT_FUNDS}
    # What was short, in the ledger's words (acceptance round 10: "available cash does not cover
    # the order" said neither what was needed nor what was available).
    assert {o.reject_message for o in rejected} == {"available cash 0.00 is less than 1872.50"}
    c = await cash(checked_pool, a)
    assert c.held == Decimal("18725.00") and c.available == 0 and c.total == Decimal("18725.00")


async def test_1000_concurrent_sells_against_shares(order_deps, checked_pool):
    a = acct()
    await ledger.credit_shares(commands.CreditShares(a, "MSFT", Decimal(100), "seed"), lambda: LedgerUnitOfWork(checked_pool))
    orders = await asyncio.gather(*(place(
        limit_buy(a, f"s{i}", qty=10, price="415.50", symbol="MSFT", side=Side.SELL), order_deps) for i in range(1000)))
    statuses = [o.status for o in orders]
    assert statuses.count(Status.NEW) == 10 and statuses.count(Status.REJECTED) == 990
    assert {o.reject_reason for o in orders if o.status is Status.REJECTED} == {RejectReason.INSUFFICIENT_SHARES}
    async with checked_pool.acquire() as conn:
        row = await conn.fetchrow("SELECT b.posted, b.held FROM ledger.balances b JOIN ledger.books k USING (book_id) "
                                  "WHERE k.owner = $1 AND k.asset = 'MSFT'", a)
    assert (row["posted"], row["held"]) == (100, 100)


async def test_one_client_order_id_100_times_concurrently(order_deps, checked_pool):
    a = acct()
    await deposit(checked_pool, a, "100000")
    req = limit_buy(a, "same-id", qty=3)
    orders = await asyncio.gather(*(place(req, order_deps) for _ in range(100)))
    replies = {mapping.order_to_proto(o).SerializeToString(deterministic=True) for o in orders}
    assert len(replies) == 1 and orders[0].status is Status.NEW
    assert (await cash(checked_pool, a)).held == Decimal("561.75")
    async with checked_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM orders.orders WHERE account_id = $1", a) == 1
    with pytest.raises(DuplicateClientOrderId) as err:
        await handlers.place_order(limit_buy(a, "same-id", qty=4), order_deps)
    assert err.value.code == "ALREADY_EXISTS" and err.value.reason == "DUPLICATE_CLIENT_ORDER_ID"
    assert err.value.metadata["orderId"] == str(orders[0].order_id)
    # Refused by the hold itself: no second hold was placed and given back.
    async with checked_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM ledger.holds WHERE account_id = $1", a) == 1
    # A business rejection is an order too: its retry returns the same rejected order.
    b = acct()
    first = await handlers.place_order(limit_buy(b, "poor"), order_deps)
    again = await handlers.place_order(limit_buy(b, "poor"), order_deps)
    assert first.status is Status.REJECTED and again.order_id == first.order_id


async def test_a_client_order_id_whose_first_placement_has_a_hold_but_no_order_yet(order_deps, checked_pool):
    """The first placement under the id is in flight (or died) after its hold: a placement of
    other parameters under the same id is refused at its hold and names the first order."""
    a, first = acct(), str(uuid.uuid4())
    uow = lambda: LedgerUnitOfWork(checked_pool)  # noqa: E731
    await deposit(checked_pool, a, "10000")
    await ledger.place_hold(commands.PlaceHold(first, a, first, "USD", Decimal("100.00"), "busy-id"), uow)
    with pytest.raises(DuplicateClientOrderId) as err:
        await handlers.place_order(limit_buy(a, "busy-id", qty=2), order_deps)
    assert err.value.metadata == {"clientOrderId": "busy-id", "orderId": first}
    assert "has not completed" in err.value.message
    c = await cash(checked_pool, a)
    assert (c.held, c.available) == (Decimal("100.00"), Decimal("9900.00"))
    await ledger.release_hold(commands.ReleaseHold(first), uow)  # what the reaper would do
    # Once undone, the refusal says so, not that the first placement may still complete
    # (round 15: "retry that request" of a request that can never complete).
    with pytest.raises(DuplicateClientOrderId) as err:
        await handlers.place_order(limit_buy(a, "busy-id", qty=2), order_deps)
    assert err.value.metadata == {"clientOrderId": "busy-id", "orderId": first}
    assert "was interrupted and undone" in err.value.message and "new client_order_id" in err.value.message


async def test_a_placement_whose_caller_goes_away_after_its_hold_is_finished(order_deps, checked_pool):
    """A client's deadline or a dropped connection cancels its PlaceOrder call; one cancelled
    after the hold was placed, before the order was recorded, left the hold without an order
    for the reaper's two minutes (round 23: 17 of 30 PlaceOrders with a deadline of a few ms).
    The placement now goes on to its end without its caller: the order is recorded NEW with its
    hold, with no retry."""
    a = acct()
    await deposit(checked_pool, a, "10000")
    placed, go_on = asyncio.Event(), asyncio.Event()

    class HeldUp:
        """The ledger's holds, the placement held up right after its hold is placed."""

        def __getattr__(self, name):
            return getattr(order_deps.holds, name)

        async def place(self, *args, **kwargs):
            refused = await order_deps.holds.place(*args, **kwargs)
            placed.set()
            await go_on.wait()
            return refused

    deps = replace(order_deps, holds=HeldUp())
    call = asyncio.create_task(handlers.place_order(limit_buy(a, "gone", qty=4), deps))
    await asyncio.wait_for(placed.wait(), 15)
    call.cancel()  # the caller goes away, its hold placed
    with pytest.raises(asyncio.CancelledError):
        await call
    go_on.set()

    async def recorded():
        async with deps.uow().reads() as uow:
            return await uow.orders.by_client_order_id(a, "gone")
    found = await eventually(recorded, timeout=15)
    assert found is not None, "the placement ended with its caller: a hold without an order"
    order, _ = found
    assert order.status is Status.NEW, order
    c = await cash(checked_pool, a)
    assert c.held == Decimal("749.00"), c  # 4 x 187.25, the order's own hold
    assert not await deps.placing.wait(15), "the placement did not finish"


async def test_a_placement_whose_caller_goes_away_while_it_is_checked_stops_there(order_deps, checked_pool):
    """Before its hold, a placement stops with its caller, as any call (round 23 review: work
    that nobody waits for must not pile up past Envoy's limit of commands in flight): nothing
    held, nothing recorded, nothing left running."""
    a = acct()
    await deposit(checked_pool, a, "10000")
    checking, go_on, holds_placed = asyncio.Event(), asyncio.Event(), []

    class HeldUpLimits:
        def __getattr__(self, name):
            return getattr(order_deps.limiter, name)

        async def check(self, *args, **kwargs):
            checking.set()
            await go_on.wait()
            return await order_deps.limiter.check(*args, **kwargs)

    class CountedHolds:
        def __getattr__(self, name):
            return getattr(order_deps.holds, name)

        async def place(self, *args, **kwargs):
            holds_placed.append(args)
            return await order_deps.holds.place(*args, **kwargs)

    deps = replace(order_deps, limiter=HeldUpLimits(), holds=CountedHolds())
    call = asyncio.create_task(handlers.place_order(limit_buy(a, "gone-early", qty=4), deps))
    await asyncio.wait_for(checking.wait(), 15)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    go_on.set()
    assert not deps.placing.tasks and not holds_placed
    async with deps.uow().reads() as uow:
        assert await uow.orders.by_client_order_id(a, "gone-early") is None
    assert (await cash(checked_pool, a)).held == 0


async def test_an_order_the_engine_rejects_says_why_in_words(order_deps, checked_pool):
    from meshkit.executions import REJECTED, Execution
    from order_svc.service_layer import lifecycle

    a = acct()
    await deposit(checked_pool, a, "10000")
    fok = await handlers.place_order(replace(limit_buy(a, "fok", qty=2), time_in_force=TimeInForce.FOK), order_deps)
    assert fok.status is Status.NEW
    await lifecycle.apply_execution(Execution(f"x-{fok.order_id}", "AAPL", REJECTED, str(fok.order_id), a,
                                              reason="FOK_NOT_FILLABLE"), order_deps)
    got = await handlers.get_order(a, fok.order_id, order_deps)
    assert (got.status, got.reject_reason) == (Status.REJECTED, RejectReason.FOK_NOT_FILLABLE)
    assert got.reject_message == "the fill-or-kill order could not fill entirely at once at its price"
    await ledger.release_hold(commands.ReleaseHold(str(fok.order_id)), lambda: LedgerUnitOfWork(checked_pool))
    # A reason order_svc has no name for is the engine refusing what order_svc validated: INTERNAL
    # with the engine's word, not the FOK's reason (round 15).
    odd = await handlers.place_order(limit_buy(a, "odd"), order_deps)
    await lifecycle.apply_execution(Execution(f"x-{odd.order_id}", "AAPL", REJECTED, str(odd.order_id), a,
                                              reason="INVALID"), order_deps)
    got = await handlers.get_order(a, odd.order_id, order_deps)
    assert (got.status, got.reject_reason, got.reject_message) == (
        Status.REJECTED, RejectReason.INTERNAL, "the engine rejected the order: INVALID")
    assert mapping.order_to_proto(got).reject_reason == order_pb2.ORDER_REJECT_REASON_INTERNAL
    await ledger.release_hold(commands.ReleaseHold(str(odd.order_id)), lambda: LedgerUnitOfWork(checked_pool))


async def test_an_execution_for_an_order_the_database_does_not_have_is_logged_and_counted(order_deps, caplog):
    """Only a database restored alone to an earlier point (not supported) has executions for
    orders it does not know: they were passed over in silence, so that restore showed nowhere
    on order_svc's side (round 15). Now each is an error in the log and a counter."""
    import logging

    from meshkit.executions import CANCELLED, Execution
    from order_svc.service_layer import lifecycle

    def counted() -> float:
        return REGISTRY.get_sample_value("stockmesh_executions_unknown_order_total") or 0.0

    before, ghost = counted(), str(uuid.uuid4())
    with caplog.at_level(logging.ERROR, logger="order_svc.lifecycle"):
        assert await lifecycle.apply_execution(Execution(f"x-{ghost}", "AAPL", CANCELLED, ghost, "nobody"), order_deps)
    assert counted() == before + 1
    assert [r.orderId for r in caplog.records if r.getMessage().startswith("execution for an order")] == [ghost]


async def test_accepted_orders_reach_jetstream_once_with_their_id(order_deps, checked_pool, nats_conn, namespace):
    a = acct()
    await deposit(checked_pool, a, "10000")
    placed = [await handlers.place_order(limit_buy(a, f"j{i}", qty=1, symbol="KO", price="62.15"), order_deps)
              for i in range(3)]
    js = nats_conn.jetstream()
    sub = await js.pull_subscribe(bus.subject(namespace, "orders", "KO"), durable=None,
                                  stream=bus.stream_name(namespace, "ORDERS"))
    seen: dict[str, matching_pb2.EngineCommand] = {}
    for _ in range(50):
        try:
            for m in await sub.fetch(10, timeout=0.2):
                cmd = matching_pb2.EngineCommand.FromString(m.data)
                if cmd.new_order.account_id == a:
                    assert m.headers["Nats-Msg-Id"] == cmd.command_id
                    seen[cmd.command_id] = cmd
        except asyncio.TimeoutError:
            pass
        if len(seen) == 3:
            break
    assert set(seen) == {str(o.order_id) for o in placed}
    cmd = seen[str(placed[0].order_id)]
    assert (cmd.new_order.limit_price, cmd.new_order.quantity, cmd.new_order.side) == ("62.15", 1, common_pb2.SIDE_BUY)
    await sub.unsubscribe()


async def test_market_orders_need_a_quote_and_hold_with_the_collar(order_deps, checked_pool, nats_conn, namespace):
    a = acct()
    await deposit(checked_pool, a, "100000")
    o = await handlers.place_order(limit_buy(a, "m1", qty=10, symbol="JPM", type_=OrderType.MARKET), order_deps)
    assert (o.status, o.reject_reason) == (Status.REJECTED, RejectReason.NO_LIQUIDITY)
    js = nats_conn.jetstream()
    await bus.ensure_stream(js, namespace, "md")  # as the engine makes it, unless a test before made it
    ev = matching_pb2.MarketDataEvent(symbol="JPM", sequence=1, bid_price="198.10", bid_size=5,
                                      ask_price="198.20", ask_size=7)
    await js.publish(bus.subject(namespace, "md", "JPM"), ev.SerializeToString())
    o = await handlers.place_order(limit_buy(a, "m2", qty=10, symbol="JPM", type_=OrderType.MARKET), order_deps)
    assert o.status is Status.NEW
    assert o.collar_price == Decimal("208.11")  # 198.20 × 1.05 = 208.11
    assert o.hold_amount == Decimal("2081.10")
    assert (await cash(checked_pool, a)).held == Decimal("2081.10")


async def test_business_rejections_are_recorded_orders(order_deps, checked_pool, monkeypatch):
    a = acct()
    await deposit(checked_pool, a, "100000")
    far = await handlers.place_order(limit_buy(a, "far", price="300"), order_deps)
    assert (far.status, far.reject_reason) == (Status.REJECTED, RejectReason.PRICE_OUT_OF_COLLAR)
    # Prices written as the order's are (acceptance round 10: "limit price 300" beside "300.00").
    assert re.fullmatch(r"limit price 300\.00 is more than 20% from (the last trade|the reference price \(no trade "
                        r"yet\)) \d+\.\d\d",
                        far.reject_message), far.reject_message
    async with checked_pool.acquire() as conn:
        await conn.execute("INSERT INTO orders.halts (symbol, reason) VALUES ('XOM', 'test') ON CONFLICT DO NOTHING")
    try:
        halted = await handlers.place_order(limit_buy(a, "h", symbol="XOM", price="113.60"), order_deps)
    finally:  # the rest of the session's tests trade XOM again
        async with checked_pool.acquire() as conn:
            await conn.execute("DELETE FROM orders.halts WHERE symbol = 'XOM' AND reason = 'test'")
    assert (halted.status, halted.reject_reason) == (Status.REJECTED, RejectReason.SYMBOL_HALTED)
    monkeypatch.setenv("STOCKMESH_MARKET_ALWAYS_OPEN", "0")
    monkeypatch.setattr(handlers, "now", lambda: datetime(2026, 11, 21, 15, 0, tzinfo=timezone.utc))  # a Saturday
    closed = await handlers.place_order(limit_buy(a, "closed"), order_deps)
    assert (closed.status, closed.reject_reason) == (Status.REJECTED, RejectReason.MARKET_CLOSED)
    assert closed.reject_message == "the market is closed on Saturdays"
    async with checked_pool.acquire() as conn:
        n = await conn.fetchval("SELECT count(*) FROM orders.orders WHERE account_id = $1 AND status = 'REJECTED'", a)
        events = await conn.fetchval("SELECT count(*) FROM audit.events WHERE stream = $1", f"order:{a}")
    assert n == 3 and events == 3
    assert (await cash(checked_pool, a)).held == 0


async def test_working_orders_are_read_from_their_index_not_the_whole_history(order_deps, checked_pool):
    """ListOrders' filter for orders not over yet (and so GetPortfolio's open orders) must not
    walk an account's whole history: an active trader's thousands of finished orders."""
    from order_svc.adapters.repository import list_sql
    from order_svc.service_layer.unit_of_work import OrderUnitOfWork

    a = acct()
    rejected = await handlers.place_order(limit_buy(a, "poor"), order_deps)  # no cash: REJECTED
    assert rejected.status is Status.REJECTED
    await deposit(checked_pool, a, "100000")
    working = await handlers.place_order(limit_buy(a, "rich"), order_deps)
    assert working.status in (Status.PENDING_NEW, Status.NEW)
    async with checked_pool.acquire() as conn, conn.transaction():
        # 3,000 finished orders of the past month, copies of the rejected one
        await conn.execute("CREATE TEMP TABLE history ON COMMIT DROP AS SELECT o.* FROM orders.orders o, "
                           "generate_series(1, 3000) WHERE o.order_id = $1", rejected.order_id)
        await conn.execute("UPDATE history SET order_id = gen_random_uuid()")
        await conn.execute("UPDATE history SET client_order_id = order_id::text, "
                           "created_at = created_at - random() * interval '30 days'")
        await conn.execute("INSERT INTO orders.orders SELECT * FROM history")
    open_statuses = ["PENDING_NEW", "NEW", "PARTIALLY_FILLED"]

    async def plan(statuses: list[str]) -> str:
        """The plan of the query as a prepared statement's generic plan (what PostgreSQL may
        settle on for a statement asyncpg keeps prepared), for this account and statuses."""
        async with checked_pool.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            await conn.execute("PREPARE listed (text, text, text[], timestamptz, uuid, bigint) AS "
                               + list_sql(statuses))
            try:
                given = ", ".join(f"'{s}'" for s in statuses)  # EXECUTE takes no parameters
                return await conn.fetchval(
                    f"EXPLAIN (FORMAT JSON) EXECUTE listed ('{a}', NULL, ARRAY[{given}]::text[], NULL, NULL, 501)")
            finally:
                await conn.execute("DEALLOCATE listed")

    async with checked_pool.acquire() as conn:
        await conn.execute("ANALYZE orders.orders")
    assert '"orders_open"' in await plan(open_statuses)
    assert '"orders_open"' in await plan(["NEW"])
    assert '"orders_open"' not in await plan([])  # every order of the account: not from that index
    async with OrderUnitOfWork(checked_pool) as uow:
        listed = await uow.orders.list(a, None, open_statuses, 501, None)
        listed_new = await uow.orders.list(a, "AAPL", ["NEW"], 501, None)
        everything = await uow.orders.list(a, None, [], 5000, None)
    assert [o.order_id for o in listed] == [working.order_id]
    assert [o.order_id for o in listed_new] == ([working.order_id] if working.status is Status.NEW else [])
    assert len(everything) == 3002


async def test_a_client_order_id_may_hold_spaces_and_any_script(order_deps, checked_pool):
    """The contract says "1-64 chars": such an id goes through the whole placement, the ledger's
    hold (its client key) included, and is found again by itself (acceptance round 11)."""
    a = acct()
    await deposit(checked_pool, a, "1000")
    for coid in ("order 1", "ordre-é 注文"):
        req = mapping.place_request(pb.PlaceOrderRequest(
            client_order_id=coid, symbol="AAPL", side=common_pb2.SIDE_BUY, type=common_pb2.ORDER_TYPE_LIMIT,
            quantity=1, limit_price="187.25", time_in_force=common_pb2.TIME_IN_FORCE_DAY), a)
        placed = await place(req, order_deps)
        assert (placed.status, placed.request.client_order_id) == (Status.NEW, coid)
        assert (await place(req, order_deps)).order_id == placed.order_id  # the same id: the same order


async def test_an_account_id_as_long_as_a_token_allows_places_orders(order_deps, checked_pool):
    """A token's subject may be 128 characters (auth.MAX_ACCOUNT); the ledger's hold service
    took 64, so such an account could deposit but every order it held failed with INTERNAL
    (round 15)."""
    from meshkit import auth

    a = ("acct-" + uuid.uuid4().hex * 4)[:auth.MAX_ACCOUNT]
    assert auth.account_problem(a) is None and len(a) == 128
    await deposit(checked_pool, a, "1000")
    for side in (Side.BUY, Side.SELL):
        if side is Side.SELL:
            await ledger.credit_shares(commands.CreditShares(a, "AAPL", Decimal(1), "seed"),
                                       lambda: LedgerUnitOfWork(checked_pool))
        placed = await place(limit_buy(a, f"long-{side.name}", qty=1, side=side), order_deps)
        assert placed.status is Status.NEW, placed


async def test_malformed_requests_record_nothing(order_deps, checked_pool):
    a = acct()
    bad = [
        pb.PlaceOrderRequest(client_order_id="x", symbol="AAPL", side=common_pb2.SIDE_BUY, type=common_pb2.ORDER_TYPE_LIMIT,
                             quantity=0, limit_price="187.25", time_in_force=common_pb2.TIME_IN_FORCE_DAY),
        pb.PlaceOrderRequest(client_order_id="x", symbol="AAPL", side=common_pb2.SIDE_BUY, type=common_pb2.ORDER_TYPE_LIMIT,
                             quantity=1, limit_price="187.255", time_in_force=common_pb2.TIME_IN_FORCE_DAY),
        pb.PlaceOrderRequest(client_order_id="x", symbol="AAPL", side=common_pb2.SIDE_UNSPECIFIED,
                             type=common_pb2.ORDER_TYPE_MARKET, quantity=1, time_in_force=common_pb2.TIME_IN_FORCE_DAY),
        pb.PlaceOrderRequest(client_order_id="", symbol="AAPL", side=common_pb2.SIDE_BUY, type=common_pb2.ORDER_TYPE_MARKET,
                             quantity=1, limit_price="1", time_in_force=common_pb2.TIME_IN_FORCE_DAY),
    ]
    for req in bad:
        with pytest.raises(InvalidArgument) as err:
            mapping.place_request(req, a)
        assert err.value.violations
    with pytest.raises(InvalidArgument) as err:
        mapping.place_request(pb.PlaceOrderRequest(
            client_order_id="x", symbol="NOPE", side=common_pb2.SIDE_BUY, type=common_pb2.ORDER_TYPE_MARKET,
            quantity=1, time_in_force=common_pb2.TIME_IN_FORCE_DAY), a)
    assert err.value.reason == "UNKNOWN_SYMBOL"
    # With other mistakes, the unknown symbol is named among them (round 15: only once the rest
    # was right, so a form showing every error needed a second round trip).
    with pytest.raises(InvalidArgument) as err:
        mapping.place_request(pb.PlaceOrderRequest(
            client_order_id="x", symbol="ZZZZ", side=common_pb2.SIDE_BUY, type=common_pb2.ORDER_TYPE_MARKET,
            quantity=0, time_in_force=common_pb2.TIME_IN_FORCE_DAY), a)
    assert err.value.reason == "INVALID_ARGUMENT"
    assert sorted(v.field for v in err.value.violations) == ["quantity", "symbol"]


async def test_rate_limits_and_a_dead_redis(order_deps, checked_pool, tmp_path, namespace, monkeypatch):
    from meshkit import cache
    from meshkit.launcher.infra import start_local_redis
    from meshkit.launcher.supervisor import Supervisor
    from meshkit.ratelimit import Limit, RateLimiter

    sup = Supervisor(say=lambda _: None)
    url = start_local_redis(tmp_path, sup)
    redis = cache.connect(url)
    try:
        order_deps.limiter = RateLimiter(redis, namespace)
        order_deps.account_limit = Limit(1.0, 3)
        a = acct()
        await deposit(checked_pool, a, "100000")
        placed = [await handlers.place_order(limit_buy(a, f"r{i}", qty=1), order_deps) for i in range(2)]
        assert [o.status for o in placed] == [Status.NEW] * 2
        change = handlers.ReplaceRequest(account_id=a, order_id=placed[1].order_id, client_order_id="r1-b", quantity=1,
                                limit_price=Decimal("187.00"), stop_price=None)
        replacement = await handlers.replace_order(change, order_deps)  # the burst's third token
        with pytest.raises(ResourceExhausted) as err:
            await handlers.place_order(limit_buy(a, "r3", qty=1), order_deps)
        assert err.value.reason == "RATE_LIMITED" and 0 < err.value.retry_after_seconds <= 1
        # Over the limit, a retry of a recorded placement still gets its order, and a reuse of
        # its id with other terms ALREADY_EXISTS (round 17: both were RESOURCE_EXHAUSTED).
        again = await handlers.place_order(limit_buy(a, "r0", qty=1), order_deps)
        assert (again.order_id, again.status) == (placed[0].order_id, Status.NEW)
        with pytest.raises(DuplicateClientOrderId):
            await handlers.place_order(limit_buy(a, "r0", qty=2), order_deps)
        assert (await handlers.replace_order(change, order_deps)).order_id == replacement.order_id  # a replace's too
        # The lookups of a flood of refused placements share statements (a flood past the limits
        # must not take the database's connections: round 17 review).
        lookups = order_deps.writes.lookups
        flood = await asyncio.gather(*(handlers.place_order(limit_buy(a, f"flood{i}", qty=1), order_deps)
                                       for i in range(30)), return_exceptions=True)
        refused = [r for r in flood if isinstance(r, ResourceExhausted)]
        assert len(refused) >= 25 and 1 <= order_deps.writes.lookups - lookups < len(refused) / 2, (
            len(refused), order_deps.writes.lookups - lookups)
        # Concurrent checks share script calls and still take each token once: of 20 orders at
        # once on a fresh account with a burst of 5, exactly 5 pass; another account's are its own.
        order_deps.account_limit = Limit(0.001, 5)
        b, c = acct(), acct()
        for x in (b, c):
            await deposit(checked_pool, x, "100000")
        calls = order_deps.limiter.script_calls
        answers = await asyncio.gather(*(handlers.place_order(limit_buy(x, f"burst{i}", qty=1), order_deps)
                                         for i in range(20) for x in (b, c)), return_exceptions=True)
        for x in (b, c):
            mine = answers[(b, c).index(x)::2]
            assert sum(isinstance(o, ResourceExhausted) for o in mine) == 15
            assert [o.status for o in mine if not isinstance(o, Exception)] == [Status.NEW] * 5
        assert order_deps.limiter.script_calls - calls < 40
        # Buckets run on Redis's clock: a replica whose clock is an hour ahead refills nothing
        # (round 17: each replica's wall clock was the bucket's, so its skew was tokens).
        import meshkit.ratelimit as ratelimit

        ahead = RateLimiter(redis, namespace)
        monkeypatch.setattr(ratelimit, "time", SimpleNamespace(time=lambda: time.time() + 3600,
                                                               monotonic=time.monotonic))
        with pytest.raises(ResourceExhausted):
            await ahead.check([(f"acct:{b}", order_deps.account_limit, "the account")])
        before = await cash(checked_pool, a)
        sup.stop_all()  # Redis dies mid-test
        after_kill = [await handlers.place_order(limit_buy(a, f"d{i}", qty=1), order_deps) for i in range(5)]
        assert all(o.status is Status.NEW for o in after_kill)  # limits fail open
        now = await cash(checked_pool, a)
        assert now.total == before.total and now.held == before.held + 5 * Decimal("187.25")
    finally:
        await redis.aclose()
        sup.stop_all()


async def test_audit_events_of_a_placement_read_as_the_stored_rows(order_deps, checked_pool):
    """The order and hold events written by the database functions (one statement each) carry
    exactly the canonical JSON the Python side writes for the stored order and hold."""
    from ledger_svc.adapters.repository import LedgerRepository
    from meshkit import audit
    from order_svc.adapters.repository import OrderRepository, _event

    a = acct()
    await deposit(checked_pool, a, "10000")
    o = await place(limit_buy(a, "audit-1", qty=3, price="187.5"), order_deps)
    assert o.status is Status.NEW
    async with checked_pool.acquire() as conn:
        stored = await OrderRepository(conn).get(o.order_id)
        hold = await LedgerRepository(conn).get_hold(o.hold_id)
        events = {r["event_type"]: r["payload"] for r in await conn.fetch(
            "SELECT event_type, payload FROM audit.events WHERE stream = $1 OR stream = $2",
            f"order:{a}", f"ledger:{a}")}
    assert stored is not None and hold is not None
    assert events["ORDER_NEW"] == audit.canonical(_event(stored))
    assert "ORDER_PENDING_NEW" not in events  # recorded once its hold is in place: born NEW
    assert events["HOLD_PLACED"] == audit.canonical({
        "holdId": hold.hold_id, "account": hold.account_id, "orderId": hold.order_id, "asset": hold.asset,
        "amount": hold.amount, "captured": hold.captured, "released": hold.released, "status": hold.status.value})
    assert '"limitPrice":"187.5000"' in events["ORDER_NEW"]


async def test_concurrent_placements_share_the_saga_statements(order_deps, checked_pool):
    a = acct()
    await deposit(checked_pool, a, "100000")
    before = order_deps.writes.statements
    orders = await asyncio.gather(*(place(limit_buy(a, f"b{i}", qty=1), order_deps) for i in range(100)))
    assert {o.status for o in orders} == {Status.NEW}
    assert order_deps.writes.statements - before < 100  # alone, each order takes one
    async with checked_pool.acquire() as conn:  # each change recorded once, in a gapless sequence
        rows = await conn.fetch("SELECT sequence, status FROM orders.updates WHERE account_id = $1 ORDER BY sequence", a)
    assert [r["sequence"] for r in rows] == list(range(1, 101))
    assert sorted(r["status"] for r in rows) == ["NEW"] * 100


async def test_a_batch_of_saga_writes_that_fails_as_a_whole_is_written_one_at_a_time(order_deps, checked_pool,
                                                                                    monkeypatch):
    import asyncpg

    from order_svc.adapters.repository import OrderRepository

    failed: list[int] = []

    def failing_batches(real):
        async def write(self, items, *more):
            if len(items) > 1:
                failed.append(len(items))
                raise asyncpg.DeadlockDetectedError("deadlock detected")
            return await real(self, items, *more)
        return write

    monkeypatch.setattr(OrderRepository, "insert_new", failing_batches(OrderRepository.insert_new))
    monkeypatch.setattr(OrderRepository, "save_transitions", failing_batches(OrderRepository.save_transitions))
    a = acct()
    await deposit(checked_pool, a, "1872.50")  # 10 × 1 × 187.25
    orders = await asyncio.gather(*(place(limit_buy(a, f"f{i}", qty=1), order_deps) for i in range(30)))
    assert failed  # batches were tried, failed, and their orders written alone
    assert sorted(o.status.value for o in orders) == ["NEW"] * 10 + ["REJECTED"] * 20


async def test_one_order_decided_twice_in_one_batch_is_written_once(order_deps, checked_pool):
    from dataclasses import replace

    from order_svc.domain.model import Order
    from order_svc.service_layer.writes import SagaWrites

    a = acct()
    writes = SagaWrites(order_deps.uow, in_flight=1)
    at = datetime.now(timezone.utc)
    first, second = (Order(order_id=uuid.uuid4(), request=limit_buy(a, coid), status=Status.PENDING_NEW,
                           created_at=at, updated_at=at, hold_asset="USD", hold_amount=Decimal("1872.5"))
                     for coid in ("d1", "d2"))
    for o in (first, second):
        assert (await writes.record(o, o.request.fingerprint()))[1] is None

    def rejected(o: Order) -> Order:
        r = replace(o)
        r.reject(RejectReason.INSUFFICIENT_FUNDS, "no funds")
        return r

    alone = asyncio.ensure_future(writes.decide(rejected(first), Status.PENDING_NEW, at, None))
    await asyncio.sleep(0)  # in flight: the next two wait and go together
    twice = [writes.decide(rejected(second), Status.PENDING_NEW, at, None) for _ in range(2)]
    assert await asyncio.gather(alone, *twice) == [True, True, False]
    async with checked_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM orders.updates WHERE order_id = $1", second.order_id) == 2


async def test_a_relay_elsewhere_wakes_on_the_outbox_notification_and_measures_the_handoff(
        checked_pool, database_url, nats_conn, namespace, ledger_addr):
    # The placing side never wakes it (as in an order_svc whose relay runs in another process)
    # and its own poll is an hour: only the notification of the commit can start its round.
    # META: no other integration test trades it (the session's engines see these orders rest).
    import grpc
    from nats.js.api import ConsumerConfig, DeliverPolicy

    from order_svc.adapters.outbox import OutboxRelay
    from tests.integration.conftest import make_order_deps

    js = nats_conn.jetstream()
    await bus.ensure_stream(js, namespace, "orders")
    channel = grpc.aio.insecure_channel(ledger_addr)
    deps, _ = make_order_deps(checked_pool, database_url, js, namespace, channel)
    deps.wake_relay = lambda: None
    relay = asyncio.create_task(OutboxRelay(database_url, js, idle_poll=3600).run())
    sub = await js.pull_subscribe(bus.subject(namespace, "orders", "META"), durable=None,  # what comes from now on
                                  stream=bus.stream_name(namespace, "ORDERS"),
                                  config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW))
    a = acct()
    seen: set[str] = set()

    async def relayed(order_id: str) -> bool:
        try:
            for m in await sub.fetch(10, timeout=0.2):
                cmd = matching_pb2.EngineCommand.FromString(m.data)
                if cmd.new_order.account_id == a:
                    seen.add(cmd.command_id)
        except asyncio.TimeoutError:
            pass
        return order_id in seen

    handed_off = lambda: REGISTRY.get_sample_value("stockmesh_outbox_handoff_seconds_count") or 0  # noqa: E731
    before = handed_off()
    try:
        await deposit(checked_pool, a, "10000")
        # The first may go in the relay's first round (it starts with one); the second is
        # committed after a round that found the first, so a notification must start its own.
        first = await handlers.place_order(limit_buy(a, "w1", qty=1, symbol="META", price="505.75"), deps)
        assert first.status is Status.NEW, first
        assert await eventually(lambda: relayed(str(first.order_id)), timeout=30)
        second = await handlers.place_order(limit_buy(a, "w2", qty=1, symbol="META", price="505.75"), deps)
        assert second.status is Status.NEW, second
        assert await eventually(lambda: relayed(str(second.order_id)), timeout=30)
        # Each published row's wait from its commit to JetStream's acknowledgement is measured.
        assert await eventually(lambda: handed_off() - before >= 2)
    finally:
        await sub.unsubscribe()
        relay.cancel()
        await asyncio.gather(relay, return_exceptions=True)
        await channel.close()


async def test_the_elected_relay_prunes_beside_relaying(pg_server_url, nats_conn, namespace):
    # A database of its own: there the old row is the oldest, where the relay's scans start.
    import asyncpg

    from order_svc.adapters.outbox import OutboxRelay
    from tests.conftest import fresh_database

    js = nats_conn.jetstream()
    await bus.ensure_stream(js, namespace, "orders")
    async with fresh_database(pg_server_url) as url:
        conn = await asyncpg.connect(url)
        relay = asyncio.create_task(OutboxRelay(url, js, retention=timedelta(hours=1), prune_every=0.1).run())
        try:
            await conn.execute("INSERT INTO orders.outbox (subject, msg_id, payload, published_at) "
                               "VALUES ('nowhere', 'close:2020-01-06:XOM', '', now() - interval '20 days')")

            async def pruned() -> bool:
                return not await conn.fetchval("SELECT count(*) FROM orders.outbox WHERE msg_id LIKE 'close:%'")
            assert await eventually(pruned, timeout=10)
            # Relaying goes on meanwhile (the scans have a connection of their own).
            await conn.execute("INSERT INTO orders.outbox (subject, msg_id, payload) VALUES ($1, $2, '')",
                               bus.subject(namespace, "orders", "ZZPRUNE"), f"pruning-{uuid.uuid4().hex}")

            async def relayed() -> bool:
                return not await conn.fetchval("SELECT count(*) FROM orders.outbox WHERE published_at IS NULL")
            assert await eventually(relayed, timeout=10)
        finally:
            relay.cancel()
            await asyncio.gather(relay, return_exceptions=True)
            await conn.close()


async def test_the_reaper_gives_back_orphaned_holds_and_checks_every_hold_once(order_deps, checked_pool):
    account = acct()
    await deposit(checked_pool, account, "5000.00")
    live = await place(limit_buy(account, "reaped-live", qty=2), order_deps)
    assert live.status is Status.NEW
    orphan = str(uuid.uuid4())  # a hold whose placement died before recording its order
    assert await order_deps.holds.place(orphan, account, orphan, "USD", Decimal("10.00")) is None

    # Younger than the orphans' age, a hold without its order is left as it is, unchecked and
    # its id unclaimed (a retry may still complete the placement), while the live order's hold
    # is checked (round 17: two ages).
    assert await handlers.reap_orphaned_holds(order_deps, older_than=0, orphan_age=3600) == 0
    async with checked_pool.acquire() as conn:
        rows = {r["hold_id"]: (r["status"], r["order_checked"]) for r in await conn.fetch(
            "SELECT hold_id, status, order_checked FROM ledger.holds WHERE account_id = $1", account)}
        assert not await conn.fetchval("SELECT count(*) FROM orders.claims WHERE order_id = $1::uuid", orphan)
    assert rows == {live.hold_id: ("PENDING", True), orphan: ("PENDING", False)}
    # Once old enough, the orphan is given back (a released hold among the marked ones must
    # not fail the marking of the others).
    assert await handlers.reap_orphaned_holds(order_deps, older_than=0, orphan_age=0) >= 1
    async with checked_pool.acquire() as conn:
        rows = {r["hold_id"]: (r["status"], r["order_checked"]) for r in await conn.fetch(
            "SELECT hold_id, status, order_checked FROM ledger.holds WHERE account_id = $1", account)}
        claimed = await conn.fetchval("SELECT claimed_by FROM orders.claims WHERE order_id = $1::uuid", orphan)
    assert rows == {live.hold_id: ("PENDING", True), orphan: ("RELEASED", False)}
    assert claimed == "reaper"
    assert (await cash(checked_pool, account)).held == live.hold_amount
    assert await handlers.reap_orphaned_holds(order_deps, older_than=0, orphan_age=0) == 0  # each hold checked once


async def _hold_rows(pool, *accounts: str) -> dict[str, tuple[str, bool]]:
    async with pool.acquire() as conn:
        return {r["hold_id"]: (r["status"], r["order_checked"]) for r in await conn.fetch(
            "SELECT hold_id, status, order_checked FROM ledger.holds WHERE account_id = ANY($1)", list(accounts))}


async def test_a_page_of_young_holds_without_orders_does_not_hold_back_the_holds_behind_it(order_deps,
                                                                                          checked_pool):
    """Round 22: the reaper read every page from the oldest unchecked hold, so a whole page of
    holds it leaves waiting (no order recorded yet, younger than the orphan age: a retry may
    still complete them) ended its round, and every hold behind them waited until they were
    orphan_age old: here, a hold whose order is recorded REJECTED, which goes back at once
    (older_than). Now the round goes on after each page (the ledger's cursor)."""
    account = acct()
    await deposit(checked_pool, account, "100.00")
    young = [str(uuid.uuid4()) for _ in range(7)]  # more than two pages of 3
    for h in young:  # holds whose placements have not recorded their orders (yet)
        assert await order_deps.holds.place(h, account, h, "USD", Decimal("1.00")) is None
    poor = acct()
    rejected = await place(limit_buy(poor, "reaped-rejected"), order_deps)  # nothing to hold with
    assert rejected.status is Status.REJECTED
    # A hold under the REJECTED order's id, as an earlier attempt of it (that died before
    # recording) left one: placed after the young ones, so it is listed behind them.
    await deposit(checked_pool, poor, "10.00")
    assert await order_deps.holds.place(str(rejected.order_id), poor, str(rejected.order_id), "USD",
                                        Decimal("10.00")) is None

    assert await handlers.reap_orphaned_holds(order_deps, older_than=0, orphan_age=3600, page=3) >= 1
    rows = await _hold_rows(checked_pool, account, poor)
    assert rows[str(rejected.order_id)][0] == "RELEASED"
    assert (await cash(checked_pool, poor)).held == 0
    assert {rows[h] for h in young} == {("PENDING", False)}  # still waiting for a retry, unchecked
    for h in young:
        await order_deps.holds.release(h)


class _CountedHolds:
    """The ledger's HoldService, each ListUncheckedHolds answer kept."""

    def __init__(self, holds) -> None:
        self.holds, self.pages = holds, []

    def __getattr__(self, name):
        return getattr(self.holds, name)

    async def unchecked(self, *args, **kwargs):
        page = await self.holds.unchecked(*args, **kwargs)
        self.pages.append([h.hold_id for h in page])
        return page


async def test_a_round_of_the_reaper_asks_the_ledger_once_a_page(order_deps, checked_pool):
    """Round 22: each page was asked for twice (by older_than, then by orphan_age to learn which
    of its holds were old enough to be orphans); now once, each hold saying whether it is past
    the orphan age: a round lists each hold once, in full pages and then a short one."""
    account = acct()
    await deposit(checked_pool, account, "1000.00")
    live = [await place(limit_buy(account, f"counted-{i}", qty=1), order_deps) for i in range(4)]
    assert {o.status for o in live} == {Status.NEW}
    counted = _CountedHolds(order_deps.holds)
    await handlers.reap_orphaned_holds(replace(order_deps, holds=counted), older_than=0, orphan_age=3600, page=3)
    listed = [h for page in counted.pages for h in page]
    assert len(listed) == len(set(listed)), "a hold listed twice in one round"
    assert {o.hold_id for o in live} <= set(listed)  # more than a page: the round went on
    assert [len(p) for p in counted.pages[:-1]] == [3] * (len(counted.pages) - 1) and len(counted.pages[-1]) < 3


async def test_a_batch_of_new_orders_claims_their_ids_in_the_order_the_reaper_claims_them(order_deps, checked_pool):
    """Round 22: a batch of new orders (sorted by account) claimed its ids in that order, the
    reaper in id order; holding one id each and waiting for the other's, they deadlocked until
    PostgreSQL's deadlock check (a second) undid one. Both claim in id order now: the batch
    waits for the reaper's first claim without holding its second."""
    from order_svc.domain.model import Order

    low, high = sorted(uuid.uuid4() for _ in range(2))
    at = datetime.now(timezone.utc)

    def rejected(order_id: uuid.UUID, account: str) -> tuple[Order, str]:
        req = limit_buy(account, f"claimed-{order_id}")
        o = Order(order_id, req, Status.PENDING_NEW, at, at)
        o.reject(RejectReason.SYMBOL_HALTED, "trading in this symbol is halted")
        return o, req.fingerprint()

    batch = [rejected(high, acct()), rejected(low, acct())]  # as sorted by account: the higher id first

    async def insert() -> list:
        async with order_deps.uow().single_statement() as uow:
            return await uow.orders.insert_new(batch)

    async with checked_pool.acquire() as reaper, checked_pool.acquire() as watcher:
        tx = reaper.transaction()
        await tx.start()
        try:  # the reaper claims the ids in order: the lower first
            await reaper.execute("INSERT INTO orders.claims (order_id, claimed_by) VALUES ($1, 'reaper')", low)
            inserting = asyncio.create_task(insert())

            async def batch_waits() -> bool:
                return await watcher.fetchval("SELECT EXISTS (SELECT 1 FROM pg_stat_activity "
                                              "WHERE $1 = ANY(pg_blocking_pids(pid)))", reaper.get_server_pid())
            assert await eventually(batch_waits, timeout=10)
            await reaper.execute("INSERT INTO orders.claims (order_id, claimed_by) VALUES ($1, 'reaper')", high)
            await tx.commit()
        except BaseException:
            await tx.rollback()
            raise
    assert await inserting == [None, None]  # no deadlock: both ids the reaper's, neither order recorded


async def test_list_orders_by_id_lists_those_of_the_account_whatever_their_status(order_deps, checked_pool):
    """ListOrders' order_ids (round 26: the ledger's portfolio asks for the orders its holds are
    open for in one call, whatever order_svc's status of each, rather than one GetOrder per
    order order_svc had ended): those of the caller's account, others' and unknown ones left
    out; ANDed with the other filters; paged like any list, its token bound to the ids; read by
    the primary key, not the account's history."""
    import grpc

    from meshkit.server import App, create_server
    from meshkit.status import error_info
    from order_svc.adapters.repository import list_sql
    from order_svc.entrypoints.grpc_server import OrderServicer
    from stockmesh.order.v1 import order_service_pb2_grpc
    from tests.support.crash import identity

    a, other = acct(), acct()
    rejected = await place(limit_buy(a, "poor"), order_deps)  # no cash yet: REJECTED
    await deposit(checked_pool, a, "10000")
    await deposit(checked_pool, other, "10000")
    working = await place(limit_buy(a, "rich", qty=1), order_deps)
    msft = await place(limit_buy(a, "msft", qty=1, price="400.00", symbol="MSFT"), order_deps)
    others = await place(limit_buy(other, "theirs", qty=1), order_deps)
    assert rejected.status is Status.REJECTED and Status.REJECTED not in (working.status, msft.status)
    server, port, _ = await create_server("127.0.0.1:0", App(name="order_svc", servicers=[
        (order_service_pb2_grpc.add_OrderServiceServicer_to_server, OrderServicer(order_deps, None),
         "stockmesh.order.v1.OrderService")]))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = order_service_pb2_grpc.OrderServiceStub(ch)

            async def listed(**kw) -> pb.ListOrdersResponse:
                return await stub.ListOrders(pb.ListOrdersRequest(**kw), metadata=identity(a), timeout=10)

            ids = [str(o.order_id) for o in (rejected, working, msft, others)] + [str(uuid.uuid4())]
            every = await listed(order_ids=ids + [str(working.order_id).upper()])  # the same order, once
            assert [o.order_id for o in every.orders] == [str(msft.order_id), str(working.order_id),
                                                          str(rejected.order_id)]  # newest first
            # An id in capitals is the same order, as GetOrder reads it (round 26 explorer 2).
            assert [o.order_id for o in (await listed(order_ids=[str(working.order_id).upper()])).orders] \
                == [str(working.order_id)]
            assert [o.order_id for o in (await listed(order_ids=[str(working.order_id), str(others.order_id)])).orders] \
                == [str(working.order_id)]  # not the account's others
            assert [o.order_id for o in (await listed(order_ids=ids, statuses=[common_pb2.ORDER_STATUS_REJECTED])).orders] \
                == [str(rejected.order_id)]
            assert [o.order_id for o in (await listed(order_ids=ids, symbol="MSFT")).orders] == [str(msft.order_id)]
            first = await listed(order_ids=ids, page_size=2)
            assert len(first.orders) == 2 and first.next_page_token
            rest = await listed(order_ids=ids, page_size=2, page_token=first.next_page_token)
            assert [o.order_id for o in rest.orders] == [str(rejected.order_id)] and not rest.next_page_token
            for bad, violations in (
                    ({"order_ids": ids[:2], "page_size": 2, "page_token": first.next_page_token},
                     [("page_token", "was returned for another account or query "
                                     "(symbol, statuses and order_ids must not change)")]),
                    ({"order_ids": ["nope", "", ids[0]]}, [("order_ids[0]", "must be an order id returned by PlaceOrder"),
                                                         ("order_ids[1]", "is required")]),
                    ({"order_ids": [str(uuid.uuid4()) for _ in range(501)]},
                     [("order_ids", "at most 500 distinct order ids, not 501")]),
                    # Repeats are forgiven, not without bound: each given id is read.
                    ({"order_ids": ids[:1] * 2001},
                     [("order_ids", "at most 500 distinct order ids in at most 2000, not 2001")])):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await listed(**bad)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert [(f.field, f.description) for f in error_info(err.value)[1].field_violations] == violations
            # Round 27: ids given twice are one order each, listed once, and count once towards
            # the 500: 500 distinct orders however often each is named (the account's three
            # among them, the others of no order), each in any case.
            distinct = ids[:3] + [str(uuid.uuid4()) for _ in range(497)]
            repeated = distinct + distinct[:3] + [i.upper() for i in distinct[:100]] + ids[:1] * 100
            assert len(repeated) == 703 and len({uuid.UUID(i) for i in repeated}) == 500
            listed_once = await listed(order_ids=repeated)
            assert [o.order_id for o in listed_once.orders] == [str(msft.order_id), str(working.order_id),
                                                                str(rejected.order_id)]
            assert not listed_once.next_page_token
    finally:
        await server.stop(None)
    async with checked_pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:  # an active trader's history of 3,000 orders, gone with the transaction
            await conn.execute("CREATE TEMP TABLE history ON COMMIT DROP AS SELECT o.* FROM orders.orders o, "
                               "generate_series(1, 3000) WHERE o.order_id = $1", rejected.order_id)
            await conn.execute("UPDATE history SET order_id = gen_random_uuid()")
            await conn.execute("UPDATE history SET client_order_id = order_id::text")
            await conn.execute("INSERT INTO orders.orders SELECT * FROM history")
            await conn.execute("ANALYZE orders.orders")
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            await conn.execute("PREPARE by_ids (text, text, text[], timestamptz, uuid, bigint, uuid[]) AS "
                               + list_sql([], by_ids=True))
            plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE by_ids ('{a}', NULL, ARRAY[]::text[], NULL, "
                                       f"NULL, 501, ARRAY['{rejected.order_id}']::uuid[])")
            await conn.execute("DEALLOCATE by_ids")
        finally:
            await tx.rollback()
    assert '"orders_pkey"' in plan, plan


async def _refused_holding_nothing(pool, deps, first: OrderRequest, reused: OrderRequest) -> None:
    """`reused` (first's client_order_id, other parameters) is refused ALREADY_EXISTS naming
    first's order, and holds nothing on the way, not even for a moment: the account's holds
    (ListHolds), ledger events and balances are as they were; then first's retry still gets its
    order."""
    async with deps.uow().reads() as uow:
        found = await uow.orders.by_client_order_id(first.account_id, first.client_order_id)
    assert found is not None
    recorded, _ = found
    before = await hold_footprint(pool, first.account_id)
    with pytest.raises(DuplicateClientOrderId) as err:
        await handlers.place_order(reused, deps)
    assert (err.value.code, err.value.reason) == ("ALREADY_EXISTS", "DUPLICATE_CLIENT_ORDER_ID")
    assert err.value.metadata == {"clientOrderId": first.client_order_id, "orderId": str(recorded.order_id)}
    would_be = str(order_id_for(reused.account_id, reused.client_order_id, reused.fingerprint()))
    assert await hold_footprint(pool, first.account_id) == before, "the refused placement held something"
    assert would_be not in {e[2] for e in before[1]}
    again = await handlers.place_order(first, deps)
    assert (again.order_id, again.status) == (recorded.order_id, recorded.status)
    assert await hold_footprint(pool, first.account_id) == before


async def test_a_client_order_id_of_an_order_rejected_before_its_hold_reused_holds_nothing(order_deps, checked_pool):
    """Round 27 (F1, case c): the first order under the id was rejected by order_svc before any
    hold (price collar, market closed, halted): the ledger never heard of the id, so a
    placement reusing it with other parameters placed a real hold (a concurrent order of the
    account could be refused for want of that cash), then gave it back once the order's insert
    found the id taken; ListHolds showed a hold of an order that never existed. Now the
    rejection has the ledger keep the id first."""
    a = acct()
    await deposit(checked_pool, a, "1000.00")
    first = limit_buy(a, "rejected-first", qty=1, price="1.00")
    rejected = await handlers.place_order(first, order_deps)
    assert (rejected.status, rejected.reject_reason) == (Status.REJECTED, RejectReason.PRICE_OUT_OF_COLLAR)
    await _refused_holding_nothing(checked_pool, order_deps, first, limit_buy(a, "rejected-first", qty=1))


async def test_a_client_order_id_of_an_order_refused_for_want_of_cash_reused_holds_nothing(order_deps,
                                                                                          checked_pool):
    """Round 27 (F1, case b): the first order under the id was refused by the ledger (too little
    cash): no hold carried the id, so a placement reusing it for an order the account can pay
    placed a hold and gave it back. Now the ledger keeps the id of a refused hold for its order."""
    a = acct()
    await deposit(checked_pool, a, "1000.00")
    first = limit_buy(a, "poor-first", qty=10)  # 1872.50
    refused = await handlers.place_order(first, order_deps)
    assert (refused.status, refused.reject_reason) == (Status.REJECTED, RejectReason.INSUFFICIENT_FUNDS)
    await _refused_holding_nothing(checked_pool, order_deps, first, limit_buy(a, "poor-first", qty=1))


async def _retried_holding_nothing(pool, deps, first: OrderRequest, rejected) -> None:
    """first's retry (the same request) returns the REJECTED order `rejected`, and holds nothing
    on the way, not even for a moment: no HOLD_PLACED or HOLD_RELEASED, `held` never moved."""
    before = await hold_footprint(pool, first.account_id)
    for _ in range(2):
        again = await handlers.place_order(first, deps)
        assert (again.order_id, again.status, again.reject_reason) == (rejected.order_id, Status.REJECTED,
                                                                       rejected.reject_reason)
        assert await hold_footprint(pool, first.account_id) == before, "the retry held something"


async def test_a_retry_of_an_order_refused_for_want_of_cash_holds_nothing_once_the_cash_is_there(order_deps,
                                                                                                checked_pool):
    """Explorer 4 (round 27, F1): an order REJECTED INSUFFICIENT_FUNDS, then a deposit, then the
    same request again (a client retrying after a timeout): it got its REJECTED order, but on
    the way it held the full amount until its record found the order REJECTED, then gave it
    back (ListHolds kept a RELEASED hold of the REJECTED order; a concurrent order was refused
    for that cash). Now the ledger answers the hold KEPT (the key it kept for this very order
    when it refused it) and order_svc returns the order recorded, nothing held."""
    a = acct()
    await deposit(checked_pool, a, "1000.00")
    first = limit_buy(a, "poor-retry", qty=10)  # 1872.50
    refused = await handlers.place_order(first, order_deps)
    assert (refused.status, refused.reject_reason) == (Status.REJECTED, RejectReason.INSUFFICIENT_FUNDS)
    await deposit(checked_pool, a, "5000.00")
    await _retried_holding_nothing(checked_pool, order_deps, first, refused)
    assert (await cash(checked_pool, a)).available == Decimal("6000.00")


async def test_a_retry_of_an_order_rejected_before_its_hold_holds_nothing_once_the_market_allows_it(
        order_deps, checked_pool):
    """Explorer 4 (F1, halted): an order REJECTED SYMBOL_HALTED; the symbol resumes; the same
    request again returns the REJECTED order, holding nothing (before: a hold of 935.00 placed
    and given back)."""
    a = acct()
    await deposit(checked_pool, a, "10000.00")

    class Halted:
        async def is_halted(self, symbol: str) -> bool:
            return True

    first = limit_buy(a, "halted-retry", qty=5, price="187.00")
    halted = await handlers.place_order(first, replace(order_deps, halts=Halted()))
    assert (halted.status, halted.reject_reason) == (Status.REJECTED, RejectReason.SYMBOL_HALTED)
    await _retried_holding_nothing(checked_pool, order_deps, first, halted)  # the symbol trades again


async def test_a_placement_that_died_after_its_refusal_kept_its_id_is_placed_by_its_retry(order_deps, checked_pool):
    """The crash window of a refusal: the ledger refused the hold (keeping the key for the
    order) and order_svc died before recording the rejection. The ledger answers the retry's
    hold KEPT; no order is recorded, so order_svc asks again past the key: placed once the cash
    is there (and refused again, recorded REJECTED, while it is not)."""
    a = acct()
    await deposit(checked_pool, a, "1000.00")
    first = limit_buy(a, "died-refused", qty=10)  # 1872.50
    would_be = order_id_for(a, first.client_order_id, first.fingerprint())
    refused = await order_deps.holds.place(str(would_be), a, str(would_be), "USD", Decimal("1872.50"),
                                           first.client_order_id)  # then the process died
    assert refused is not None and refused.reason is RejectReason.INSUFFICIENT_FUNDS
    await deposit(checked_pool, a, "1000.00")
    placed = await handlers.place_order(first, order_deps)
    assert (placed.order_id, placed.status) == (would_be, Status.NEW)
    assert (await cash(checked_pool, a)).held == Decimal("1872.50")
    again = await handlers.place_order(first, order_deps)
    assert (again.order_id, again.status) == (would_be, Status.NEW)


async def test_a_placement_that_died_after_its_rejections_id_was_kept_is_placed_by_a_retry_the_market_allows(
        order_deps, checked_pool):
    """The crash window of a rejection before any hold (halted), the symbol trading again by the
    retry: the key kept for the order answers the retry's hold KEPT, no order is recorded, so
    order_svc asks again past the key and the order is placed."""
    a = acct()
    await deposit(checked_pool, a, "1000.00")
    first = limit_buy(a, "died-halted", qty=1)
    would_be = order_id_for(a, first.client_order_id, first.fingerprint())
    await order_deps.holds.register_key(a, first.client_order_id, str(would_be))  # then the process died
    placed = await handlers.place_order(first, order_deps)
    assert (placed.order_id, placed.status) == (would_be, Status.NEW)
    assert (await cash(checked_pool, a)).held == Decimal("187.25")


async def test_a_rejection_whose_id_the_ledger_could_not_keep_is_recorded_and_answered_all_the_same(
        order_deps, checked_pool, caplog):
    """The ledger unreachable when order_svc has it keep a rejected order's client_order_id: the
    rejection is recorded and answered as before (and logged); the orders table still refuses the
    id's reuse."""
    a = acct()
    await deposit(checked_pool, a, "1000.00")

    class LedgerDown:
        def __getattr__(self, name):
            return getattr(order_deps.holds, name)

        async def register_key(self, *args):
            raise Unavailable("the ledger could not register the client_order_id: UNAVAILABLE")

    first = limit_buy(a, "no-ledger", qty=1, price="1.00")
    rejected = await handlers.place_order(first, replace(order_deps, holds=LedgerDown()))
    assert (rejected.status, rejected.reject_reason) == (Status.REJECTED, RejectReason.PRICE_OUT_OF_COLLAR)
    assert "could not keep a rejected order's client_order_id" in caplog.text
    with pytest.raises(DuplicateClientOrderId):
        await handlers.place_order(limit_buy(a, "no-ledger", qty=2), order_deps)
    assert (await cash(checked_pool, a)).held == 0


async def test_a_rejected_placement_that_died_after_its_id_was_kept_is_completed_by_its_retry(order_deps,
                                                                                             checked_pool):
    """The crash window of case c: the ledger kept the id, order_svc died before recording the
    rejection. The same request's retry records and returns its order; before it, a request with
    other parameters is refused as the id of a placement that has not completed, holding nothing."""
    a = acct()
    await deposit(checked_pool, a, "1000.00")
    first = limit_buy(a, "died-rejecting", qty=1, price="1.00")
    would_be = order_id_for(a, first.client_order_id, first.fingerprint())
    await order_deps.holds.register_key(a, first.client_order_id, str(would_be))  # then the process died
    before = await hold_footprint(checked_pool, a)
    with pytest.raises(DuplicateClientOrderId) as err:
        await handlers.place_order(limit_buy(a, "died-rejecting", qty=1), order_deps)
    assert err.value.metadata == {"clientOrderId": "died-rejecting", "orderId": str(would_be)}
    assert "has not completed" in err.value.message
    assert await hold_footprint(checked_pool, a) == before
    retried = await handlers.place_order(first, order_deps)
    assert (retried.order_id, retried.status) == (would_be, Status.REJECTED)
    await _refused_holding_nothing(checked_pool, order_deps, first, limit_buy(a, "died-rejecting", qty=2))
