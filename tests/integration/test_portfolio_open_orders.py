"""One GetPortfolio reply does not contradict itself while orders fill: order_svc and the ledger
apply the engine's executions each on its own consumer, so either can be ahead of the other by
a few fills; the open orders of a reply are those the ledger's snapshot (the reply's cash and
positions) holds for, with the fills the ledger has applied to them (round 25 explorer: a
position of 2,400 beside an open buy filled 2,700).

Each test applies an execution to one service only (no consumers, no engine), asks the
ledger's GetPortfolio (over gRPC, asking an order_svc of this process), then applies it to the
other, so that the invariants checked after the test hold."""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import asyncpg
import grpc
import pytest

from ledger_svc.adapters.orders import GrpcOpenOrders
from ledger_svc.entrypoints.grpc_server import LedgerServicer
from ledger_svc.service_layer import commands, handlers as ledger, settlement
from ledger_svc.service_layer.unit_of_work import LedgerUnitOfWork
from meshkit import calendar
from meshkit.executions import FILL, REJECTED, REPLACED, Execution
from meshkit.server import App, create_server
from order_svc.domain.model import OrderRequest, OrderType, Side, Status, TimeInForce
from order_svc.entrypoints.grpc_server import OrderServicer
from order_svc.service_layer import handlers, lifecycle
from order_svc.service_layer.handlers import ReplaceRequest
from stockmesh.common.v1 import common_pb2
from stockmesh.ledger.v1 import ledger_service_pb2 as lpb, ledger_service_pb2_grpc
from stockmesh.order.v1 import order_service_pb2 as opb, order_service_pb2_grpc
from tests.integration.conftest import own_database_fixtures
from tests.support.crash import identity

pytestmark = pytest.mark.integration
D = Decimal
PARTIALLY_FILLED, NEW = common_pb2.ORDER_STATUS_PARTIALLY_FILLED, common_pb2.ORDER_STATUS_NEW

# A database of this module's own: its fills are applied straight to each service, with no
# execution journal, which a settlement of the day in another module would report.
pool, database_url, namespace, ledger_addr = own_database_fixtures()


@pytest.fixture
async def portfolio_of(checked_pool, order_deps):
    """GetPortfolio of an account, from a ledger (in this process) that asks an order_svc (in
    this process, on the test's order_deps) for the orders its portfolios list."""
    orders, orders_port, _ = await create_server("127.0.0.1:0", App(name="order_svc", servicers=[
        (order_service_pb2_grpc.add_OrderServiceServicer_to_server, OrderServicer(order_deps, None),
         "stockmesh.order.v1.OrderService")]))
    await orders.start()
    to_orders = grpc.aio.insecure_channel(f"127.0.0.1:{orders_port}")
    servicer = LedgerServicer(lambda: LedgerUnitOfWork(checked_pool), None, GrpcOpenOrders(to_orders))
    ledger_server, ledger_port, _ = await create_server("127.0.0.1:0", App(name="ledger_svc", servicers=[
        (ledger_service_pb2_grpc.add_LedgerServiceServicer_to_server, servicer, "stockmesh.ledger.v1.LedgerService")]))
    await ledger_server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{ledger_port}")
    stub = ledger_service_pb2_grpc.LedgerServiceStub(channel)

    async def get(account: str):
        return (await stub.GetPortfolio(lpb.GetPortfolioRequest(), metadata=identity(account), timeout=10)).portfolio

    get.order_svc = order_service_pb2_grpc.OrderServiceStub(to_orders)  # (the same order_svc, asked directly)
    try:
        yield get
    finally:
        await channel.close()
        await to_orders.close()
        await ledger_server.stop(None)
        await orders.stop(None)


def _limit(account: str, side: Side, qty: int, price: str) -> OrderRequest:
    return OrderRequest(account_id=account, client_order_id=uuid.uuid4().hex, symbol="AAPL", side=side,
                        type=OrderType.LIMIT, quantity=qty, limit_price=D(price), stop_price=None,
                        time_in_force=TimeInForce.GTC)


async def _crossing(checked_pool, order_deps, qty: int = 10, price: str = "187.00"):
    """A buyer (cash) and a seller (shares) each with a GTC limit order for `qty` AAPL at `price`."""
    uow = lambda: LedgerUnitOfWork(checked_pool)  # noqa: E731
    buyer, seller = f"pb-{uuid.uuid4().hex[:8]}", f"ps-{uuid.uuid4().hex[:8]}"
    await ledger.deposit(commands.Deposit(buyer, D("10000.00"), "fund"), uow)
    await ledger.credit_shares(commands.CreditShares(seller, "AAPL", D(qty), "seed", D(price)), uow)
    buy = await handlers.place_order(_limit(buyer, Side.BUY, qty, price), order_deps)
    sell = await handlers.place_order(_limit(seller, Side.SELL, qty, price), order_deps)
    assert (buy.status, sell.status) == (Status.NEW, Status.NEW)
    return buy, sell


def _fill(buy, sell, qty: int, price: str, leaves: int, counter_leaves: int | None = None) -> Execution:
    """A fill of the buy (incoming) against the sell (resting), each left with `leaves` unless
    `counter_leaves` says the sell's."""
    at = datetime.now(timezone.utc)
    return Execution(execution_id=f"AAPL:pf-{uuid.uuid4().hex}", symbol="AAPL", type=FILL,
                     order_id=str(buy.order_id), account_id=buy.account_id, side="BUY",
                     counter_order_id=str(sell.order_id), counter_account_id=sell.account_id, price=D(price),
                     quantity=qty, leaves=leaves, counter_leaves=leaves if counter_leaves is None else counter_leaves,
                     executed_at=at, trade_date=calendar.trading_day(at))


async def _to_order_svc(order_deps, *exs: Execution) -> None:
    for ex in exs:
        assert await lifecycle.apply_execution(ex, order_deps)


async def _to_ledger(checked_pool, *exs: Execution) -> None:
    for ex in exs:
        assert await settlement.apply_execution(ex, lambda: LedgerUnitOfWork(checked_pool))


def _shares(p, symbol: str = "AAPL") -> tuple[int, int]:
    return next(((x.quantity, x.held) for x in p.positions if x.symbol == symbol), (0, 0))


def _open(p) -> list[tuple[str, int, int, str]]:
    return [(o.order_id, common_pb2.OrderStatus.Name(o.status), o.filled_quantity, o.average_fill_price)
            for o in p.open_orders]


async def test_more_open_orders_than_a_reply_lists_are_said_to_be_more(portfolio_of, checked_pool, order_deps,
                                                                       monkeypatch):
    """A portfolio lists the orders of its newest 500 holds (ListOrders' page); round 27: an
    account holding for more could not tell that some were left out. open_orders_truncated says
    so, and ListOrders filtered to the open statuses, paged, gives every one of them. (With the
    ledger's page of orders at 3 rather than 500, so that 4 orders are more than it lists; the
    unit tests of adapters/orders.py check 500 and 501.)"""
    from ledger_svc.adapters import orders

    monkeypatch.setattr(orders, "PAGE", 3)
    account = f"pm-{uuid.uuid4().hex[:8]}"
    await ledger.deposit(commands.Deposit(account, D("1000.00"), "fund"), lambda: LedgerUnitOfWork(checked_pool))
    placed = [await handlers.place_order(_limit(account, Side.BUY, 1, price), order_deps)
              for price in ("187.00", "187.01", "187.02")]
    assert {o.status for o in placed} == {Status.NEW}
    full = await portfolio_of(account)
    assert [o.order_id for o in full.open_orders] == [str(o.order_id) for o in reversed(placed)]
    assert not full.open_orders_truncated

    placed.append(await handlers.place_order(_limit(account, Side.BUY, 1, "187.03"), order_deps))
    cut = await portfolio_of(account)
    assert cut.open_orders_truncated and cut.cash.held == "748.06"  # all 4 held for
    # The newest holds' orders: the oldest hold's order is the one left out.
    assert [o.order_id for o in cut.open_orders] == [str(o.order_id) for o in reversed(placed[1:])]

    every, token = [], ""
    while True:  # the rest, as the field's comment says: ListOrders of the open statuses, paged
        page = await portfolio_of.order_svc.ListOrders(opb.ListOrdersRequest(
            statuses=[common_pb2.ORDER_STATUS_PENDING_NEW, NEW, PARTIALLY_FILLED], page_size=3, page_token=token),
            metadata=identity(account), timeout=10)
        every += [o.order_id for o in page.orders]
        if not (token := page.next_page_token):
            break
    assert every == [str(o.order_id) for o in reversed(placed)]


async def test_order_svc_ahead_an_open_order_shows_the_fills_the_ledger_has(portfolio_of, checked_pool, order_deps):
    """order_svc has applied fills the ledger has not: the reply's open order shows the
    ledger's fills, which its position and held cash are made of; and an order order_svc has
    FILLED already is still open while its hold is (its cash is still in `held`)."""
    buy, sell = await _crossing(checked_pool, order_deps)
    first, second, last = (_fill(buy, sell, 4, "186.50", 6), _fill(buy, sell, 3, "187.00", 3),
                           _fill(buy, sell, 3, "187.00", 0))
    await _to_order_svc(order_deps, first, second)
    await _to_ledger(checked_pool, first)
    assert (await handlers.get_order(buy.account_id, buy.order_id, order_deps)).filled_quantity == 7

    bought = await portfolio_of(buy.account_id)
    assert _shares(bought) == (4, 0) and bought.cash.held == "1124.00"  # 1,870.00 held, 746.00 paid
    assert _open(bought) == [(str(buy.order_id), "ORDER_STATUS_PARTIALLY_FILLED", 4, "186.50")]
    sold = await portfolio_of(sell.account_id)
    assert _shares(sold) == (6, 6)
    assert _open(sold) == [(str(sell.order_id), "ORDER_STATUS_PARTIALLY_FILLED", 4, "186.50")]

    await _to_order_svc(order_deps, last)  # FILLED at order_svc; the ledger still holds for it
    bought = await portfolio_of(buy.account_id)
    assert _shares(bought) == (4, 0) and bought.cash.held == "1124.00"
    assert _open(bought) == [(str(buy.order_id), "ORDER_STATUS_PARTIALLY_FILLED", 4, "186.50")]
    shown = bought.open_orders[0]
    assert (shown.quantity, shown.limit_price, shown.client_order_id, shown.end_reason) == \
        (10, "187.00", buy.request.client_order_id, 0)

    await _to_ledger(checked_pool, second, last)
    bought = await portfolio_of(buy.account_id)
    assert _shares(bought) == (10, 0) and bought.cash.held == "0.00" and _open(bought) == []


async def test_ledger_ahead_an_order_it_has_filled_is_not_listed(portfolio_of, checked_pool, order_deps):
    """The ledger has applied fills order_svc has not: the reply's open order shows them
    (order_svc still says NEW, 0 filled), and once the ledger has applied the last one (its
    hold released) the order is not listed, although order_svc still shows it open."""
    buy, sell = await _crossing(checked_pool, order_deps)
    first, last = _fill(buy, sell, 4, "187.00", 6), _fill(buy, sell, 6, "187.00", 0)
    await _to_ledger(checked_pool, first)

    bought = await portfolio_of(buy.account_id)
    assert _shares(bought) == (4, 0) and bought.cash.held == "1122.00"
    assert _open(bought) == [(str(buy.order_id), "ORDER_STATUS_PARTIALLY_FILLED", 4, "187.00")]

    await _to_ledger(checked_pool, last)
    assert (await handlers.get_order(buy.account_id, buy.order_id, order_deps)).status is Status.NEW
    bought = await portfolio_of(buy.account_id)
    assert _shares(bought) == (10, 0) and bought.cash.held == "0.00" and _open(bought) == []
    sold = await portfolio_of(sell.account_id)
    assert _shares(sold) == (0, 0) and _open(sold) == []

    await _to_order_svc(order_deps, first, last)


async def test_a_replacement_counts_the_fills_of_the_order_it_replaced(portfolio_of, checked_pool, order_deps):
    """Across a replace the ledger's fills of an order are those of its chain (as order_svc's
    filled_quantity, FIX's CumQty). order_svc ahead with the replace: the reply lists the new
    order, pending, with the old one's fills (the transfer will carry them) and what is held
    for both, not the old one (round 26 explorer: both were listed, their remaining quantities
    adding up to more than was held); the ledger ahead: the new order, with the old one's
    fills, and not the old one."""
    buy, sell = await _crossing(checked_pool, order_deps)
    first = _fill(buy, sell, 4, "187.00", 6)
    await _to_order_svc(order_deps, first)
    await _to_ledger(checked_pool, first)
    new = await handlers.replace_order(ReplaceRequest(
        account_id=buy.account_id, order_id=buy.order_id, client_order_id=uuid.uuid4().hex, quantity=12,
        limit_price=D("187.00"), stop_price=None), order_deps)
    at = datetime.now(timezone.utc)
    replaced = Execution(execution_id=f"AAPL:pf-{uuid.uuid4().hex}", symbol="AAPL", type=REPLACED,
                         order_id=str(buy.order_id), account_id=buy.account_id, side="BUY", leaves=8,
                         new_order_id=str(new.order_id), executed_at=at, trade_date=calendar.trading_day(at))
    await _to_order_svc(order_deps, replaced)  # order_svc: the old order CANCELLED (replaced), the new one 4 of 12

    bought = await portfolio_of(buy.account_id)
    assert _open(bought) == [(str(new.order_id), "ORDER_STATUS_PENDING_NEW", 4, "187.00")]
    [listed] = bought.open_orders
    assert D(bought.cash.held) == (listed.quantity - listed.filled_quantity) * D(listed.limit_price)

    await _to_ledger(checked_pool, replaced)
    last = _fill(new, sell, 6, "187.00", 2, 0)
    await _to_ledger(checked_pool, last)  # the ledger ahead now
    bought = await portfolio_of(buy.account_id)
    assert _shares(bought) == (10, 0) and bought.cash.held == "374.00"
    assert _open(bought) == [(str(new.order_id), "ORDER_STATUS_PARTIALLY_FILLED", 10, "187.00")]

    await _to_order_svc(order_deps, last)
    await handlers.cancel_order(buy.account_id, new.order_id, order_deps)
    cancelled = Execution(execution_id=f"AAPL:pf-{uuid.uuid4().hex}", symbol="AAPL", type="CANCELLED",
                          order_id=str(new.order_id), account_id=buy.account_id, reason="USER",
                          executed_at=at, trade_date=calendar.trading_day(at))
    await _to_order_svc(order_deps, cancelled)
    await _to_ledger(checked_pool, cancelled)


async def test_an_order_the_engine_rejected_is_listed_new_until_the_ledger_releases_its_hold(
        portfolio_of, checked_pool, order_deps):
    """order_svc has applied the engine's rejection, the ledger not yet: the order is listed NEW,
    as order_svc showed it until then (it records an order NEW once its hold is placed), without
    the rejection, its cash still held; once the ledger has released its hold, it is not listed.
    (order_svc is asked for it by id, whatever its status there: round 26.)"""
    buy, sell = await _crossing(checked_pool, order_deps)
    at = datetime.now(timezone.utc)
    rejected = Execution(execution_id=f"AAPL:pf-{uuid.uuid4().hex}", symbol="AAPL", type=REJECTED,
                         order_id=str(buy.order_id), account_id=buy.account_id, side="BUY",
                         reason="PRICE_OUT_OF_COLLAR", executed_at=at, trade_date=calendar.trading_day(at))
    await _to_order_svc(order_deps, rejected)
    assert (await handlers.get_order(buy.account_id, buy.order_id, order_deps)).status is Status.REJECTED
    bought = await portfolio_of(buy.account_id)
    assert _open(bought) == [(str(buy.order_id), "ORDER_STATUS_NEW", 0, "")] and bought.cash.held == "1870.00"
    assert (bought.open_orders[0].reject_reason, bought.open_orders[0].reject_message) == (0, "")
    await _to_ledger(checked_pool, rejected)
    bought = await portfolio_of(buy.account_id)
    assert _open(bought) == [] and bought.cash.held == "0.00"


async def test_hold_open_finds_the_fills_that_ended_a_resting_order_by_an_index(checked_pool, order_deps):
    """Review, round 26: migration 0021 dropped 0018's executions_filling_counter (the fills
    that ended their resting order: HOLD_OPEN's lookup in every reconciliation) for an index of
    every resting fill, so HOLD_OPEN read every resting fill (the execution journal is kept for
    ever) to find the few that ended one: a Seq Scan of ledger.executions, ~3x the time, on
    210,000 rows. A partial index is written only for the rows it covers (the fills that end
    their resting order), so keeping it costs little. (Sequential scans are kept out of the
    plan: whether one is cheaper on a table of a test's size says nothing of one kept for ever.)"""
    from ledger_svc.adapters.settlement import SettlementRepository

    class Explained:  # the repository's statement, explained rather than run
        def __init__(self, conn) -> None:
            self.conn = conn

        async def fetch(self, sql: str, *args):
            return await self.conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args)

    async with checked_pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:  # 20,000 fills of others' orders, one in ten ending the resting one
            await conn.execute(
                "INSERT INTO ledger.executions (execution_id, symbol, type, order_id, account_id, counter_order_id, "
                "counter_account_id, side, price, quantity, trade_date, executed_at, leaves, counter_leaves) "
                "SELECT 'plan-' || n, 'AAPL', 'FILL', gen_random_uuid()::text, 'other', gen_random_uuid()::text, "
                "'another', 'BUY', 187, 1, current_date, now(), n % 2, n % 10 FROM generate_series(1, 20000) n")
            await conn.execute("ANALYZE ledger.executions")
            await conn.execute("SET LOCAL enable_seqscan = off")
            plan = await SettlementRepository(Explained(conn)).pending_holds_of_ended_orders()
        finally:
            await tx.rollback()
    assert _filtered_on(plan, "executions", "counter_leaves") == [], plan


def _filtered_on(plan: str, table: str, column: str) -> list[str]:
    """The filters on `column` of the nodes of a JSON plan that read `table`'s rows one by one
    (what an index did not decide)."""
    import json

    found: list[str] = []

    def walk(node: dict) -> None:
        if node.get("Relation Name") == table and column in node.get("Filter", ""):
            found.append(f"{node['Node Type']}: {node['Filter']}")
        for child in node.get("Plans", []):
            walk(child)

    walk(json.loads(plan)[0]["Plan"])
    return found


async def test_the_snapshot_does_not_read_every_fill_of_an_open_order(checked_pool, order_deps):
    """Review, round 26: the snapshot's statement summed every fill the ledger had applied to
    each open order (and to every order of its replace chain) on every GetPortfolio, so a market
    maker's portfolio read its whole resting history: 300 open orders with 50,000 fills took
    ~220-330 ms in the statement alone (1 ms before; GetPortfolio's p99 target is 10 ms), and
    one open order at the end of a chain of 5,000 replaces ~210 ms. Each hold now keeps its
    order's fills (migration 0021), so what the statement reads does not grow with an order's
    fills nor with its replaces, and no execution of the journal is read at all."""
    from ledger_svc.adapters.settlement import HOLDINGS

    buy, sell = await _crossing(checked_pool, order_deps)
    first = _fill(buy, sell, 1, "187.00", 9)
    await _to_ledger(checked_pool, first)

    async def rows_read(conn) -> dict[str, int]:
        """The rows the statement reads of each table, for the seller's portfolio (the plan's
        actual rows: not a timing)."""
        plan = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + HOLDINGS, sell.account_id, "USD")
        read: dict[str, int] = {}

        def walk(node: dict) -> None:
            if "Relation Name" in node:
                read[node["Relation Name"]] = read.get(node["Relation Name"], 0) + \
                    node["Actual Rows"] * node["Actual Loops"] + node.get("Rows Removed by Filter", 0)
            for child in node.get("Plans", []):
                walk(child)

        walk(json.loads(plan)[0]["Plan"])
        return read

    async with checked_pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:  # 3,000 more fills of the seller's resting order (as many buyers), and a chain of
            # 300 completed replaces before it, gone with the transaction
            before = await rows_read(conn)
            await conn.execute(
                "INSERT INTO ledger.executions (execution_id, symbol, type, order_id, account_id, counter_order_id, "
                "counter_account_id, side, price, quantity, trade_date, executed_at, leaves, counter_leaves) "
                "SELECT 'mm-' || n, 'AAPL', 'FILL', gen_random_uuid()::text, 'buyer-' || n, $1, $2, 'BUY', 187, 1, "
                "current_date, now(), 0, 5 FROM generate_series(1, 3000) n", str(sell.order_id), sell.account_id)
            await conn.execute(
                "INSERT INTO ledger.holds (hold_id, account_id, book_id, order_id, asset, amount, released, status, "
                "resolved_at) SELECT 'was-' || n, account_id, book_id, 'was-' || n, asset, 1, 1, 'RELEASED', now() "
                "FROM ledger.holds, generate_series(1, 300) n WHERE hold_id = $1", str(sell.order_id))
            await conn.execute(
                "INSERT INTO ledger.hold_transfers (to_hold_id, from_hold_id, order_id, account_id, asset, "
                "unit_amount, reserve, status, resolved_at) "
                "SELECT CASE WHEN n = 1 THEN $1 ELSE 'was-' || (n - 1) END, 'was-' || n, "
                "CASE WHEN n = 1 THEN $1 ELSE 'was-' || (n - 1) END, $2, 'AAPL', 1, 0, 'COMPLETED', now() "
                "FROM generate_series(1, 300) n", str(sell.order_id), sell.account_id)
            await conn.execute("ANALYZE ledger.executions")
            await conn.execute("ANALYZE ledger.hold_transfers")
            after = await rows_read(conn)
        finally:
            await tx.rollback()
    await _to_order_svc(order_deps, first)
    last = _fill(buy, sell, 9, "187.00", 0)
    await _to_order_svc(order_deps, last)
    await _to_ledger(checked_pool, last)
    assert after == before, f"rows read with one fill applied and no replace: {before}; with 3,001 and 300: {after}"
    assert "executions" not in after


async def test_the_fill_totals_of_open_holds_are_filled_in_by_the_migration(pg_server_url):
    """Migration 0021 gives each hold still open the fills its order had before (from the
    journal, as the incoming and as the resting order, and those of the orders it replaced):
    exactly what the ledger counts as it applies them, which it then goes on from."""
    from meshkit.migrate import apply_all
    from tests.conftest import fresh_database
    from tests.support.migrations import roll_back

    async with fresh_database(pg_server_url) as url:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
        try:
            uow = lambda: LedgerUnitOfWork(pool)  # noqa: E731
            tag = uuid.uuid4().hex[:8]
            buyer, seller, mm = f"mb-{tag}", f"ms-{tag}", f"mm-{tag}"
            await ledger.deposit(commands.Deposit(buyer, D("10000"), "fund"), uow)
            await ledger.credit_shares(commands.CreditShares(seller, "AAPL", D(50), "seed"), uow)
            await ledger.credit_shares(commands.CreditShares(mm, "AAPL", D(50), "seed"), uow)
            for hold, account, asset, amount in ((f"b-{tag}", buyer, "USD", "5000"), (f"s-{tag}", seller, "AAPL", "20"),
                                                  (f"m-{tag}", mm, "AAPL", "20"), (f"e-{tag}", seller, "AAPL", "5")):
                await ledger.place_hold(commands.PlaceHold(hold, account, hold, asset, D(amount)), uow)

            def fill(n: int, buy: str, sell: str, qty: int, price: str, b_leaves: int, s_leaves: int) -> Execution:
                at = datetime.now(timezone.utc)
                return Execution(execution_id=f"AAPL:mf{n}-{tag}", symbol="AAPL", type=FILL, order_id=f"b-{tag}",
                                 account_id=buyer, side="BUY", counter_order_id=sell,
                                 counter_account_id=seller if sell.startswith(("s-", "e-", "r-")) else mm,
                                 price=D(price), quantity=qty, leaves=b_leaves, counter_leaves=s_leaves,
                                 executed_at=at, trade_date=calendar.trading_day(at))

            at = datetime.now(timezone.utc)
            await ledger.transfer_hold(commands.TransferHold(f"s-{tag}", f"r-{tag}", f"r-{tag}", seller, "AAPL", D(1),
                                                             D(0)), uow)
            for ex in (fill(1, f"b-{tag}", f"s-{tag}", 3, "187.25", 27, 17), fill(2, f"b-{tag}", f"m-{tag}", 2, "187", 25, 18),
                       Execution(execution_id=f"AAPL:mr-{tag}", symbol="AAPL", type=REPLACED, order_id=f"s-{tag}",
                                 account_id=seller, side="SELL", leaves=15, new_order_id=f"r-{tag}", executed_at=at,
                                 trade_date=calendar.trading_day(at)),
                       fill(3, f"b-{tag}", f"r-{tag}", 4, "186.5", 21, 11), fill(4, f"b-{tag}", f"e-{tag}", 5, "186", 16, 0)):
                await settlement.apply_execution(ex, uow)
            counted = {r["hold_id"]: (r["filled"], r["notional"], r["status"]) for r in await pool.fetch(
                "SELECT hold_id, filled, notional, status FROM ledger.holds WHERE hold_id LIKE $1", f"%-{tag}")}
            assert counted[f"b-{tag}"] == (14, 3 * D("187.25") + 2 * D(187) + 4 * D("186.5") + 5 * D(186), "PENDING")
            assert counted[f"r-{tag}"] == (7, 3 * D("187.25") + 4 * D("186.5"), "PENDING")  # s's and its own
            assert counted[f"m-{tag}"] == (2, 2 * D(187), "PENDING")
            assert counted[f"e-{tag}"][2] == "CAPTURED"  # resolved: not filled in again

            roll_back(url, "0022.ledger-hold-fill-totals-only-grow")  # its trigger names the columns
            roll_back(url, "0021.ledger-hold-fill-totals")
            await pool.expire_connections()
            assert apply_all(url) == 2
            filled_in = {r["hold_id"]: (r["filled"], r["notional"], r["status"]) for r in await pool.fetch(
                "SELECT hold_id, filled, notional, status FROM ledger.holds WHERE hold_id LIKE $1", f"%-{tag}")}
            assert {h: v for h, v in filled_in.items() if v[2] == "PENDING"} == \
                {h: v for h, v in counted.items() if v[2] == "PENDING"}
            assert filled_in[f"e-{tag}"][:2] == (0, 0)  # a resolved hold is history: never listed
            indexes = {r[0] for r in await pool.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'executions'")}
            assert "executions_filling_counter" in indexes and "executions_by_counter_order" not in indexes

            # The ledger goes on from there.
            await settlement.apply_execution(fill(5, f"b-{tag}", f"m-{tag}", 1, "188", 15, 17), uow)
            assert await pool.fetchval("SELECT filled FROM ledger.holds WHERE hold_id = $1", f"m-{tag}") == 3
        finally:
            await pool.close()
