"""The ledger's call to order_svc for the orders a portfolio lists, and when order_svc fails."""
from __future__ import annotations

import contextlib
import uuid

import grpc
import pytest

from ledger_svc.adapters.orders import GrpcOpenOrders
from meshkit.errors import Unavailable
from stockmesh.order.v1 import order_pb2, order_service_pb2, order_service_pb2_grpc

SOME = [str(uuid.uuid4())]  # a held order


async def test_order_svc_not_answering_is_unavailable_not_internal() -> None:
    """Killed or restarting, order_svc made GetPortfolio INTERNAL for everyone holding anything
    (acceptance round 11: 27 calls in a row, until it was back); UNAVAILABLE is what a client
    retries, and the transport's details (an internal address) stay in the log."""
    async with grpc.aio.insecure_channel("127.0.0.1:1") as channel:
        with pytest.raises(Unavailable) as err:
            await GrpcOpenOrders(channel, timeout=2).orders(SOME)
    assert err.value.message == ("the portfolio's open orders could not be read from order_svc: UNAVAILABLE; "
                                 "retry shortly")


@contextlib.asynccontextmanager
async def order_svc(servicer):
    """A channel to a stand-in order_svc serving on a port of its own."""
    server = grpc.aio.server()
    order_service_pb2_grpc.add_OrderServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(None)


class Broken(order_service_pb2_grpc.OrderServiceServicer):
    async def ListOrders(self, request, context):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a bug in the request")


async def test_order_svc_refusing_the_request_stays_an_error_of_ours() -> None:
    async with order_svc(Broken()) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await GrpcOpenOrders(channel, timeout=5).orders(SOME)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # INTERNAL to the client: not retried


class Slow(order_service_pb2_grpc.OrderServiceServicer):
    async def ListOrders(self, request, context):
        import asyncio

        await asyncio.sleep(2.5)  # a loaded order_svc
        return order_service_pb2.ListOrdersResponse()


async def test_a_slow_order_svc_is_waited_for_within_the_callers_deadline() -> None:
    """Round 19 soak: the ledger gave order_svc a fixed 2 s, so a loaded order_svc made
    GetPortfolio UNAVAILABLE although the client allowed 10 s. It waits as long as the caller's
    deadline leaves (10 s when the caller set none), and no longer."""
    async with order_svc(Slow()) as channel:
        orders = GrpcOpenOrders(channel)
        assert await orders.orders(SOME) == {}  # no deadline of the caller's
        assert await orders.orders(SOME, time_left=10.0) == {}
        with pytest.raises(Unavailable, match="DEADLINE_EXCEEDED"):
            await orders.orders(SOME, time_left=1.0)


class Known(order_service_pb2_grpc.OrderServiceServicer):
    """order_svc's ListOrders filtered by order ids, over the orders `known` (whatever their
    status); GetOrder should never be asked."""

    def __init__(self, *known: str) -> None:
        self.known = known
        self.asked: list[list[str]] = []

    async def ListOrders(self, request, context):
        self.asked.append(list(request.order_ids))
        assert request.page_size == 500 and not request.statuses and not request.symbol
        return order_service_pb2.ListOrdersResponse(orders=[
            order_pb2.Order(order_id=i) for i in self.known if i in request.order_ids])

    async def GetOrder(self, request, context):
        self.asked.append(["GetOrder", request.order_id])
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such order")


async def test_the_orders_of_open_holds_are_asked_by_id_in_one_call() -> None:
    """A portfolio lists the orders its holds are open for, whatever order_svc's status of each
    (it applies the engine's executions ahead of the ledger or behind): asked in one ListOrders
    by their ids (round 26 review: one for those order_svc showed open, then one GetOrder per
    order it had ended, 300 for a market maker's portfolio while the ledger was behind). An id
    order_svc does not know is left out; a hold placed through HoldService under another name
    than an order id is not asked for."""
    open_id, ended_id, unknown = (str(uuid.uuid4()) for _ in range(3))
    known = Known(open_id, ended_id)
    async with order_svc(known) as channel:
        found = await GrpcOpenOrders(channel, timeout=5).orders([open_id, ended_id, unknown, "tool-hold"])
    assert sorted(found) == sorted([open_id, ended_id])
    assert known.asked == [[open_id, ended_id, unknown]]


async def test_a_portfolio_of_more_held_orders_than_a_page_asks_once_for_the_first_page_of_them() -> None:
    held = [str(uuid.uuid4()) for _ in range(600)]  # the newest hold's first (settlement.HOLDINGS)
    known = Known(*held)
    async with order_svc(known) as channel:
        found = await GrpcOpenOrders(channel, timeout=5).orders(held)
        assert await GrpcOpenOrders(channel, timeout=5).orders(["tool-hold"]) == {}  # nothing to ask
    assert known.asked == [held[:500]] and sorted(found) == sorted(held[:500])


def test_a_portfolio_says_when_more_orders_are_held_for_than_it_lists() -> None:
    """open_orders_truncated (round 27): more orders held for than the 500 asked; a hold not
    named after an order (a tool's) is no order left out, nor is an order of two holds (a
    replacement with its replace's reserve) counted twice."""
    from ledger_svc.adapters.orders import more_than_listed

    held = [str(uuid.uuid4()) for _ in range(501)]
    assert more_than_listed(held) and not more_than_listed(held[:500])
    assert not more_than_listed(held[:500] + ["tool-hold", held[0]])
    assert not more_than_listed([])
