"""ReplaceOrder through Envoy and the whole mesh: a resting buy is replaced (more shares, a
better price); the old order ends CANCELLED with replaced_by, the new one trades, and both
portfolios are exact."""
from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from meshkit.status import error_info
from tests.support.funding import transfer_in_shares
from stockmesh.common.v1 import common_pb2
from stockmesh.ledger.v1 import ledger_service_pb2 as lpb, ledger_service_pb2_grpc
from stockmesh.order.v1 import order_service_pb2 as opb, order_service_pb2_grpc

pytestmark = pytest.mark.e2e
SYMBOL = "NVDA"  # reference 121.40; no other end-to-end test trades it


def limit(coid: str, side: int, qty: int, price: str) -> opb.PlaceOrderRequest:
    return opb.PlaceOrderRequest(client_order_id=coid, symbol=SYMBOL, side=side, type=common_pb2.ORDER_TYPE_LIMIT,
                                 quantity=qty, limit_price=price, time_in_force=common_pb2.TIME_IN_FORCE_GTC)


async def until(get, ok, what: str, timeout: float = 30.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await get()
        if ok(value):
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {value}")
        await asyncio.sleep(0.1)


async def test_resting_order_replaced_then_traded(mesh):
    alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    await transfer_in_shares(mesh.database_url, bob, SYMBOL, 20, "100.00")  # bought earlier at 100.00
    async with mesh.channel() as ch:
        orders = order_service_pb2_grpc.OrderServiceStub(ch)
        cash = ledger_service_pb2_grpc.LedgerServiceStub(ch)
        await cash.Deposit(lpb.DepositRequest(amount="2000.00", idempotency_key="d"), metadata=mesh.auth(alice))

        async def portfolio(account: str):
            return (await cash.GetPortfolio(lpb.GetPortfolioRequest(), metadata=mesh.auth(account))).portfolio

        async def order(account: str, order_id: str):
            return (await orders.GetOrder(opb.GetOrderRequest(order_id=order_id), metadata=mesh.auth(account))).order

        old = (await orders.PlaceOrder(limit("b1", common_pb2.SIDE_BUY, 10, "120.00"), metadata=mesh.auth(alice))).order
        assert old.status == common_pb2.ORDER_STATUS_NEW
        assert (await portfolio(alice)).cash.held == "1200.00"

        # Another account cannot touch it.
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await orders.ReplaceOrder(opb.ReplaceOrderRequest(order_id=old.order_id, client_order_id="x", quantity=10,
                                                              limit_price="121.00"), metadata=mesh.auth(bob))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND and error_info(e.value)[0].reason == "ORDER_NOT_FOUND"

        req = opb.ReplaceOrderRequest(order_id=old.order_id, client_order_id="b1-r", quantity=15, limit_price="121.00")
        new = (await orders.ReplaceOrder(req, metadata=mesh.auth(alice))).order
        assert (new.replaces, new.quantity, new.limit_price, new.client_order_id) == (old.order_id, 15, "121.00", "b1-r")
        assert (await orders.ReplaceOrder(req, metadata=mesh.auth(alice))).order.order_id == new.order_id  # a retry
        assert (await portfolio(alice)).cash.held == "1815.00"  # 1200.00 + the 615.00 difference, taken at once

        new = await until(lambda: order(alice, new.order_id), lambda o: o.status == common_pb2.ORDER_STATUS_NEW,
                          "the replacement to work")
        replaced = await order(alice, old.order_id)
        assert (replaced.status, replaced.replaced_by) == (common_pb2.ORDER_STATUS_CANCELLED, new.order_id)

        # The old order ended: replacing it again is FAILED_PRECONDITION.
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await orders.ReplaceOrder(opb.ReplaceOrderRequest(order_id=old.order_id, client_order_id="b1-r2",
                                                              quantity=10, limit_price="121.00"), metadata=mesh.auth(alice))
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        info = error_info(e.value)[0]  # naming the order in its place, as a CancelOrder of it does (round 23)
        assert (info.reason, info.metadata["replacedBy"], info.metadata["lastReplacement"]) == (
            "ORDER_NOT_ACTIVE", new.order_id, new.order_id)
        assert f"replaced by order {new.order_id}, which is working in its place: replace that one" in e.value.details()

        # bob sells 20 at 120.50: 15 trade with the replacement at its price (it rests: the maker).
        sell = (await orders.PlaceOrder(limit("s1", common_pb2.SIDE_SELL, 20, "120.50"), metadata=mesh.auth(bob))).order
        filled = await until(lambda: order(alice, new.order_id), lambda o: o.status == common_pb2.ORDER_STATUS_FILLED,
                             "the replacement to fill")
        assert (filled.filled_quantity, filled.average_fill_price) == (15, "121.00")
        await until(lambda: order(bob, sell.order_id),
                    lambda o: o.status == common_pb2.ORDER_STATUS_PARTIALLY_FILLED and o.filled_quantity == 15,
                    "bob's partial fill")

        a = await until(lambda: portfolio(alice), lambda p: p.cash.held == "0.00" and p.positions, "alice settled")
        assert (a.cash.total, a.cash.available, a.cash.held) == ("185.00", "185.00", "0.00")  # 2000 − 15 × 121.00
        assert [(p.symbol, p.quantity, p.available, p.held, p.average_cost) for p in a.positions] == [
            (SYMBOL, 15, 15, 0, "121.00")]
        b = await until(lambda: portfolio(bob), lambda p: p.cash.unsettled == "1815.00", "bob's proceeds")
        assert (b.cash.total, b.cash.available, b.cash.unsettled) == ("1815.00", "0.00", "1815.00")
        assert [(p.symbol, p.quantity, p.available, p.held, p.average_cost) for p in b.positions] == [
            (SYMBOL, 5, 0, 5, "100.00")]  # 5 still offered by the resting sell

        await orders.CancelOrder(opb.CancelOrderRequest(order_id=sell.order_id), metadata=mesh.auth(bob))
        await until(lambda: order(bob, sell.order_id), lambda o: o.status == common_pb2.ORDER_STATUS_CANCELLED,
                    "bob's cancel")
        b = await until(lambda: portfolio(bob), lambda p: p.positions and p.positions[0].held == 0, "bob's release")
        assert [(p.quantity, p.available, p.held) for p in b.positions] == [(5, 5, 0)]
