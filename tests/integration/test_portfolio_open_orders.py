"""One GetPortfolio reply does not contradict itself while orders fill: order_svc and the ledger
apply the engine's executions each on its own consumer, so either can be ahead of the other by
a few fills; the open orders of a reply are those the ledger's snapshot (the reply's cash and
positions) holds for, with the fills the ledger has applied to them (round 25 explorer: a
position of 2,400 beside an open buy filled 2,700).

Each test applies an execution to one service only (no consumers, no engine), asks the
ledger's GetPortfolio (over gRPC, asking an order_svc of this process), then applies it to the
other, so that the invariants checked after the test hold."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from decimal import Decimal

import grpc
import pytest

from ledger_svc.adapters.orders import GrpcOpenOrders
from ledger_svc.entrypoints.grpc_server import LedgerServicer
from ledger_svc.service_layer import commands, handlers as ledger, settlement
from ledger_svc.service_layer.unit_of_work import LedgerUnitOfWork
from meshkit import calendar
from meshkit.executions import FILL, REPLACED, Execution
from meshkit.server import App, create_server
from order_svc.domain.model import OrderRequest, OrderType, Side, Status, TimeInForce
from order_svc.entrypoints.grpc_server import OrderServicer
from order_svc.service_layer import handlers, lifecycle
from order_svc.service_layer.handlers import ReplaceRequest
from stockmesh.common.v1 import common_pb2
from stockmesh.ledger.v1 import ledger_service_pb2 as lpb, ledger_service_pb2_grpc
from stockmesh.order.v1 import order_service_pb2_grpc
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
    filled_quantity, FIX's CumQty). order_svc ahead with the replace: the reply lists the old
    order (its hold still open) and the new one as pending (its reserve); the ledger ahead:
    the new order, with the old one's fills, and not the old one."""
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
    assert sorted(_open(bought)) == sorted([(str(buy.order_id), "ORDER_STATUS_PARTIALLY_FILLED", 4, "187.00"),
                                            (str(new.order_id), "ORDER_STATUS_PENDING_NEW", 0, "")])
    old = next(o for o in bought.open_orders if o.order_id == str(buy.order_id))
    assert (old.replaced_by, old.end_reason) == ("", 0)  # open, as the ledger has it

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


async def test_the_fills_of_the_open_orders_are_read_from_their_indexes(checked_pool, order_deps):
    """The snapshot's statement reads the fills of the open orders only, as the incoming order
    and as the resting one, not the whole execution journal of every account (ledger.executions
    keeps every execution, forever)."""
    from ledger_svc.adapters.settlement import HOLDINGS

    buy, sell = await _crossing(checked_pool, order_deps)
    first = _fill(buy, sell, 4, "187.00", 6)
    await _to_ledger(checked_pool, first)
    async with checked_pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:  # 20,000 fills of others' orders, gone with the transaction
            await conn.execute(
                "INSERT INTO ledger.executions (execution_id, symbol, type, order_id, account_id, counter_order_id, "
                "counter_account_id, side, price, quantity, trade_date, executed_at) "
                "SELECT 'plan-' || n, 'AAPL', 'FILL', gen_random_uuid()::text, 'other', gen_random_uuid()::text, "
                "'another', 'BUY', 187, 1, current_date, now() FROM generate_series(1, 20000) n")
            await conn.execute("ANALYZE ledger.executions")
            plans = [await conn.fetchval("EXPLAIN (FORMAT JSON) " + HOLDINGS, account, "USD")
                     for account in (buy.account_id, sell.account_id)]
        finally:
            await tx.rollback()
    for plan in plans:
        assert '"executions_by_order"' in plan and '"executions_by_counter_order"' in plan, plan
    await _to_order_svc(order_deps, first)
    last = _fill(buy, sell, 6, "187.00", 0)
    await _to_order_svc(order_deps, last)
    await _to_ledger(checked_pool, last)
