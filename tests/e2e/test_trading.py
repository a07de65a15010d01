"""Two accounts trade through Envoy and the whole mesh (order_svc → JetStream → matching
engine → executions → ledger settlement and order lifecycle): a partial fill then a fill, both
streams see every update, portfolios show exact cash, shares and average cost, and a client
that disconnects resumes with exactly what it missed."""
from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import grpc
import pytest

from tests.support.funding import transfer_in_shares
from tests.support.wait import eventually
from stockmesh.common.v1 import common_pb2
from stockmesh.ledger.v1 import ledger_service_pb2 as lpb, ledger_service_pb2_grpc
from stockmesh.matching.v1 import market_data_service_pb2 as mpb, market_data_service_pb2_grpc
from stockmesh.order.v1 import order_pb2, order_service_pb2 as opb, order_service_pb2_grpc

pytestmark = pytest.mark.e2e
SYMBOL = "KO"


def limit(coid: str, side: int, qty: int, price: str) -> opb.PlaceOrderRequest:
    return opb.PlaceOrderRequest(client_order_id=coid, symbol=SYMBOL, side=side, type=common_pb2.ORDER_TYPE_LIMIT,
                                 quantity=qty, limit_price=price, time_in_force=common_pb2.TIME_IN_FORCE_GTC)


async def collect(stub, md, after: int, until, timeout: float = 30.0) -> list:
    """Read the account's update stream from `after` until `until(updates)` holds."""
    got = []
    call = stub.StreamOrderUpdates(opb.StreamOrderUpdatesRequest(after_sequence=after), metadata=md)
    try:
        async with asyncio.timeout(timeout):
            async for u in call:
                got.append(u)
                if until(got):
                    break
    finally:
        call.cancel()
    return got


async def test_two_accounts_trade_and_see_every_update(mesh):
    alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    await transfer_in_shares(mesh.database_url, bob, SYMBOL, 100, "60.00")  # bought earlier at 60.00
    async with mesh.channel() as ch:
        orders = order_service_pb2_grpc.OrderServiceStub(ch)
        cash = ledger_service_pb2_grpc.LedgerServiceStub(ch)
        await cash.Deposit(lpb.DepositRequest(amount="10000.00", idempotency_key="d"), metadata=mesh.auth(alice))

        sell = (await orders.PlaceOrder(limit("s1", common_pb2.SIDE_SELL, 10, "62.00"), metadata=mesh.auth(bob))).order
        assert sell.status == common_pb2.ORDER_STATUS_NEW
        buy1 = (await orders.PlaceOrder(limit("b1", common_pb2.SIDE_BUY, 4, "62.15"), metadata=mesh.auth(alice))).order

        def terminal_for(order_id: str, status: int):
            return lambda ups: any(u.order.order_id == order_id and u.order.status == status for u in ups)

        bob_first = await collect(orders, mesh.auth(bob), 0,
                                  terminal_for(sell.order_id, common_pb2.ORDER_STATUS_PARTIALLY_FILLED))
        book = await market_data_service_pb2_grpc.MarketDataServiceStub(ch).GetOrderBook(
            mpb.GetOrderBookRequest(symbol=SYMBOL, depth=5), metadata=mesh.auth(alice))
        assert [(lvl.price, lvl.quantity) for lvl in book.asks][:1] == [("62.00", 6)]
        # bob disconnected after the partial fill; the rest of his updates arrive while he is away.
        buy2 = (await orders.PlaceOrder(limit("b2", common_pb2.SIDE_BUY, 6, "62.00"), metadata=mesh.auth(alice))).order
        alice_all = await collect(orders, mesh.auth(alice), 0,
                                  terminal_for(buy2.order_id, common_pb2.ORDER_STATUS_FILLED))
        bob_rest = await collect(orders, mesh.auth(bob), bob_first[-1].sequence,
                                 terminal_for(sell.order_id, common_pb2.ORDER_STATUS_FILLED))
        bob_all = await collect(orders, mesh.auth(bob), 0, lambda ups: len(ups) == len(bob_first) + len(bob_rest))

        # Resuming gives exactly what was missed: no gap, no duplicate.
        assert [u.sequence for u in bob_all] == list(range(1, len(bob_all) + 1))
        assert [u.SerializeToString() for u in bob_first + bob_rest] == [u.SerializeToString() for u in bob_all]
        assert [u.sequence for u in alice_all] == list(range(1, len(alice_all) + 1))
        assert [(u.order.status, u.fill.quantity, u.fill.price) for u in bob_all] == [
            (common_pb2.ORDER_STATUS_NEW, 0, ""), (common_pb2.ORDER_STATUS_PARTIALLY_FILLED, 4, "62.00"), (common_pb2.ORDER_STATUS_FILLED, 6, "62.00")]
        fills = [u for u in alice_all if u.HasField("fill")]
        assert [(u.order.order_id, u.fill.quantity, u.fill.price) for u in fills] == [
            (buy1.order_id, 4, "62.00"), (buy2.order_id, 6, "62.00")]
        assert alice_all[-1].order.average_fill_price == "62.00"

        async def settled() -> tuple:
            a = (await cash.GetPortfolio(lpb.GetPortfolioRequest(), metadata=mesh.auth(alice))).portfolio
            b = (await cash.GetPortfolio(lpb.GetPortfolioRequest(), metadata=mesh.auth(bob))).portfolio
            return a, b

        for _ in range(100):  # the ledger settles from the same execution stream, asynchronously
            a, b = await settled()
            if a.cash.held == "0.00" and b.positions and b.positions[0].held == 0:
                break
            await asyncio.sleep(0.1)
        assert (a.cash.total, a.cash.available, a.cash.held) == ("9380.00", "9380.00", "0.00")  # 10 × 62.00 paid
        assert [(p.symbol, p.quantity, p.available, p.held, p.average_cost, p.market_price) for p in a.positions] == [
            (SYMBOL, 10, 10, 0, "62.00", "62.00")]
        assert (b.cash.total, b.cash.settled, b.cash.unsettled, b.cash.available) == ("620.00", "0.00", "620.00", "0.00")
        assert [(p.symbol, p.quantity, p.average_cost, p.market_value, p.unrealized_pnl) for p in b.positions] == [
            (SYMBOL, 90, "60.00", "5580.00", "180.00")]  # 90 × 62.00 − 90 × 60.00
        assert a.equity == "10000.00" and not a.open_orders

        # Each statement reconciles with the cash total (bob's proceeds listed at the sale) and
        # names fills, never the other side's order; shares are whole.
        fill_ids = {u.fill.fill_id for u in fills}
        for account, p, other in ((alice, a, sell.order_id), (bob, b, buy1.order_id)):
            lines = (await cash.ListActivities(lpb.ListActivitiesRequest(page_size=100),
                                               metadata=mesh.auth(account))).activities
            assert sum(Decimal(x.amount) for x in lines if x.asset == "USD") == Decimal(p.cash.total)
            assert sum(Decimal(x.amount) for x in lines if x.asset == "USD" and x.settled) == Decimal(p.cash.settled)
            trades = [x for x in lines if x.reference in fill_ids]
            assert trades and all(other not in x.reference + x.description for x in lines)
        assert {(x.asset, x.amount, x.description, x.settled) for x in lines if x.reference in fill_ids} == {
            (SYMBOL, "-4", "Sold 4 KO at 62.00", True), (SYMBOL, "-6", "Sold 6 KO at 62.00", True),
            ("USD", "248.00", "Sold 4 KO at 62.00: proceeds, unsettled until settlement", False),
            ("USD", "372.00", "Sold 6 KO at 62.00: proceeds, unsettled until settlement", False)}


async def test_portfolio_lists_the_open_orders_of_an_account_that_holds_cash_or_shares(mesh):
    """GetPortfolio asks order_svc for open orders only when the ledger holds something for the
    account (every live order has its hold): a resting buy (cash held) and a resting sell
    (shares held) are listed, and once both are cancelled the list is empty again."""
    carol = f"carol-{uuid.uuid4().hex[:6]}"
    await transfer_in_shares(mesh.database_url, carol, "V", 20, "250.00")
    async with mesh.channel() as ch:
        orders = order_service_pb2_grpc.OrderServiceStub(ch)
        ledger = ledger_service_pb2_grpc.LedgerServiceStub(ch)
        md = mesh.auth(carol)

        async def portfolio():
            return (await ledger.GetPortfolio(lpb.GetPortfolioRequest(), metadata=md)).portfolio

        assert not (await portfolio()).open_orders  # shares, nothing held
        sell = (await orders.PlaceOrder(opb.PlaceOrderRequest(
            client_order_id="pf-sell", symbol="V", side=common_pb2.SIDE_SELL, type=common_pb2.ORDER_TYPE_LIMIT,
            quantity=5, limit_price="300.00", time_in_force=common_pb2.TIME_IN_FORCE_GTC), metadata=md)).order
        assert sell.status == common_pb2.ORDER_STATUS_NEW
        p = await portfolio()
        assert p.cash.held == "0.00" and [(x.symbol, x.held) for x in p.positions] == [("V", 5)]
        assert [o.order_id for o in p.open_orders] == [sell.order_id]

        await ledger.Deposit(lpb.DepositRequest(amount="1000.00", idempotency_key="pf"), metadata=md)
        buy = (await orders.PlaceOrder(opb.PlaceOrderRequest(
            client_order_id="pf-buy", symbol="V", side=common_pb2.SIDE_BUY, type=common_pb2.ORDER_TYPE_LIMIT,
            quantity=2, limit_price="250.00", time_in_force=common_pb2.TIME_IN_FORCE_GTC), metadata=md)).order
        await orders.CancelOrder(opb.CancelOrderRequest(order_id=sell.order_id), metadata=md)

        async def sell_cancel_applied() -> bool:  # by the ledger and by order_svc, each asynchronously
            p = await portfolio()
            return p.positions[0].held == 0 and len(p.open_orders) == 1

        await eventually(sell_cancel_applied)
        p = await portfolio()
        assert p.cash.held == "500.00" and p.positions[0].held == 0  # only the buy's cash is held
        assert [o.order_id for o in p.open_orders] == [buy.order_id]

        await orders.CancelOrder(opb.CancelOrderRequest(order_id=buy.order_id), metadata=md)

        async def buy_status() -> int:
            return (await orders.GetOrder(opb.GetOrderRequest(order_id=buy.order_id), metadata=md)).order.status

        async def buy_cancel_applied() -> bool:
            return (await portfolio()).cash.held == "0.00" and await buy_status() == common_pb2.ORDER_STATUS_CANCELLED

        await eventually(buy_cancel_applied)
        p, status = await portfolio(), await buy_status()
        assert p.cash.held == "0.00" and status == common_pb2.ORDER_STATUS_CANCELLED and not p.open_orders
        ended = (await orders.GetOrder(opb.GetOrderRequest(order_id=buy.order_id), metadata=md)).order
        assert (ended.end_reason, ended.end_message) == (order_pb2.ORDER_END_REASON_CUSTOMER_CANCEL,
                                                         "cancelled at the customer's request")


async def test_a_stream_from_now_skips_the_history(mesh):
    """StreamOrderUpdates with from_now: nothing of the account's past, then every update from
    the call on, numbered on from the latest sequence; combined with after_sequence it is
    INVALID_ARGUMENT."""
    dave = f"dave-{uuid.uuid4().hex[:6]}"
    async with mesh.channel() as ch:
        orders = order_service_pb2_grpc.OrderServiceStub(ch)
        md = mesh.auth(dave)
        await ledger_service_pb2_grpc.LedgerServiceStub(ch).Deposit(
            lpb.DepositRequest(amount="1000.00", idempotency_key="fn"), metadata=md)
        old = (await orders.PlaceOrder(limit("fn-1", common_pb2.SIDE_BUY, 1, "55.00"), metadata=md)).order
        await orders.CancelOrder(opb.CancelOrderRequest(order_id=old.order_id), metadata=md)
        history = await collect(orders, md, 0, lambda ups: ups[-1].order.status == common_pb2.ORDER_STATUS_CANCELLED)
        assert [u.sequence for u in history] == [1, 2]

        call = orders.StreamOrderUpdates(opb.StreamOrderUpdatesRequest(from_now=True), metadata=md)
        try:
            # Its headers come once it listens, saying where it starts: after the history.
            assert dict(await call.initial_metadata())["x-stockmesh-after-sequence"] == "2"
            new = (await orders.PlaceOrder(limit("fn-2", common_pb2.SIDE_BUY, 1, "55.00"), metadata=md)).order
            async with asyncio.timeout(15):
                first = await call.read()
        finally:
            call.cancel()
        assert (first.sequence, first.order.order_id, first.order.status) == (3, new.order_id, common_pb2.ORDER_STATUS_NEW)
        await orders.CancelOrder(opb.CancelOrderRequest(order_id=new.order_id), metadata=md)

        both = orders.StreamOrderUpdates(opb.StreamOrderUpdatesRequest(after_sequence=1, from_now=True), metadata=md)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await both.read()
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
