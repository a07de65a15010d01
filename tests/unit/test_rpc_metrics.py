"""Every call is counted by method and code (stockmesh_rpc_total), also a stream its client
cancels and one a handler aborts itself: acceptance round 9 found 400 StreamQuotes opened and
cancelled with no series moving (only a normal end or an exception was counted). A stand-in
OrderService behind meshkit's interceptor on a local grpc.aio server."""
from __future__ import annotations

import asyncio

import grpc
import pytest
from prometheus_client import REGISTRY

from meshkit.errors import Unavailable
from meshkit.interceptors import ServiceInterceptor
from stockmesh.order.v1 import order_pb2, order_service_pb2 as opb, order_service_pb2_grpc
from tests.support.wait import eventually

STREAM = "/stockmesh.order.v1.OrderService/StreamOrderUpdates"
UNARY = "/stockmesh.order.v1.OrderService/GetOrder"


def count(method: str, code: str) -> float:
    return REGISTRY.get_sample_value("stockmesh_rpc_total", {"method": method, "code": code}) or 0.0


class StandIn(order_service_pb2_grpc.OrderServiceServicer):
    async def StreamOrderUpdates(self, request, context):
        yield order_pb2.OrderUpdate(sequence=1)
        if request.after_sequence == 1:  # ends at once
            return
        if request.after_sequence == 2:  # the handler's own abort, as a stream told to stop
            await context.abort(grpc.StatusCode.UNAVAILABLE, "shutting down")
        if request.after_sequence == 3:  # a domain error, mapped by the interceptor
            raise Unavailable("gone")
        await asyncio.Event().wait()  # until the client cancels

    async def GetOrder(self, request, context):
        await asyncio.Event().wait()


async def test_streams_are_counted_however_they_end():
    server = grpc.aio.server(interceptors=[ServiceInterceptor()])
    order_service_pb2_grpc.add_OrderServiceServicer_to_server(StandIn(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    codes = ("OK", "UNAVAILABLE", "CANCELLED")
    before = {code: count(STREAM, code) for code in codes}
    unary_before = count(UNARY, "CANCELLED")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = order_service_pb2_grpc.OrderServiceStub(ch)
            assert [u.sequence async for u in stub.StreamOrderUpdates(opb.StreamOrderUpdatesRequest(after_sequence=1))] \
                == [1]
            for after in (2, 3):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    async for _ in stub.StreamOrderUpdates(opb.StreamOrderUpdatesRequest(after_sequence=after)):
                        pass
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            cancelled = stub.StreamOrderUpdates(opb.StreamOrderUpdatesRequest())
            assert (await cancelled.read()).sequence == 1
            cancelled.cancel()
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.GetOrder(opb.GetOrderRequest(order_id="x"), timeout=0.2)  # its deadline passes

            def moved():
                return ({code: count(STREAM, code) - before[code] for code in codes},
                        count(UNARY, "CANCELLED") - unary_before)
            assert await eventually(lambda: moved() == ({"OK": 1, "UNAVAILABLE": 2, "CANCELLED": 1}, 1),
                                    timeout=10), moved()
    finally:
        await server.stop(None)
