"""The ledger's call to order_svc for a portfolio's open orders, when order_svc fails."""
from __future__ import annotations

import contextlib

import grpc
import pytest

from ledger_svc.adapters.orders import GrpcOpenOrders
from meshkit.errors import Unavailable
from stockmesh.order.v1 import order_service_pb2_grpc


async def test_order_svc_not_answering_is_unavailable_not_internal() -> None:
    """Killed or restarting, order_svc made GetPortfolio INTERNAL for everyone holding anything
    (acceptance round 11: 27 calls in a row, until it was back); UNAVAILABLE is what a client
    retries, and the transport's details (an internal address) stay in the log."""
    async with grpc.aio.insecure_channel("127.0.0.1:1") as channel:
        with pytest.raises(Unavailable) as err:
            await GrpcOpenOrders(channel, timeout=2).open_orders()
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
            await GrpcOpenOrders(channel, timeout=5).open_orders()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # INTERNAL to the client: not retried


class Slow(order_service_pb2_grpc.OrderServiceServicer):
    async def ListOrders(self, request, context):
        import asyncio

        from stockmesh.order.v1 import order_service_pb2
        await asyncio.sleep(2.5)  # a loaded order_svc
        return order_service_pb2.ListOrdersResponse()


async def test_a_slow_order_svc_is_waited_for_within_the_callers_deadline() -> None:
    """Round 19 soak: the ledger gave order_svc a fixed 2 s, so a loaded order_svc made
    GetPortfolio UNAVAILABLE although the client allowed 10 s. It waits as long as the caller's
    deadline leaves (10 s when the caller set none), and no longer."""
    async with order_svc(Slow()) as channel:
        orders = GrpcOpenOrders(channel)
        assert await orders.open_orders() == []  # no deadline of the caller's
        assert await orders.open_orders(time_left=10.0) == []
        with pytest.raises(Unavailable, match="DEADLINE_EXCEEDED"):
            await orders.open_orders(time_left=1.0)


class Known(order_service_pb2_grpc.OrderServiceServicer):
    """One open order (`open_id`) and one ended (`ended_id`); any other id is NOT_FOUND."""

    def __init__(self, open_id: str, ended_id: str) -> None:
        self.open_id, self.ended_id = open_id, ended_id
        self.asked: list[str] = []

    async def ListOrders(self, request, context):
        from stockmesh.order.v1 import order_pb2, order_service_pb2
        return order_service_pb2.ListOrdersResponse(orders=[order_pb2.Order(order_id=self.open_id)])

    async def GetOrder(self, request, context):
        from stockmesh.order.v1 import order_pb2, order_service_pb2
        self.asked.append(request.order_id)
        if request.order_id != self.ended_id:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such order")
        return order_service_pb2.GetOrderResponse(order=order_pb2.Order(order_id=self.ended_id))


async def test_the_orders_of_open_holds_are_the_open_ones_then_each_ended_one_by_id() -> None:
    """A portfolio lists the orders its holds are open for: those order_svc still shows open
    come from one ListOrders; one it has ended already (it applied the last fill before the
    ledger) is asked by id; a hold of no order of order_svc's (an unknown id, or a hold placed
    through HoldService under another name) is left out, never an error."""
    import uuid

    open_id, ended_id, unknown = (str(uuid.uuid4()) for _ in range(3))
    known = Known(open_id, ended_id)
    async with order_svc(known) as channel:
        found = await GrpcOpenOrders(channel, timeout=5).orders([open_id, ended_id, unknown, "tool-hold"])
    assert sorted(found) == sorted([open_id, ended_id])
    assert sorted(known.asked) == sorted([ended_id, unknown])  # not the open one, nor a name of no order
