"""order_svc asked to stop (SIGTERM, as in a rolling restart) ends its open StreamOrderUpdates
calls at once with UNAVAILABLE, the status gRPC clients retry, naming the last sequence the
stream sent; the client reopens the stream there on the restarted process and misses nothing.
(Before, they waited out the 5 s shutdown grace period and ended with UNAVAILABLE "Cancelling
all calls", which says nothing of where to resume.)"""
from __future__ import annotations

import asyncio
import os
import signal
import uuid

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from tests.support.wait import eventually
from stockmesh.common.v1 import common_pb2
from stockmesh.ledger.v1 import ledger_service_pb2 as lpb, ledger_service_pb2_grpc
from stockmesh.order.v1 import order_service_pb2 as opb, order_service_pb2_grpc

pytestmark = pytest.mark.e2e
SYMBOL = "GOOGL"  # no other test on the shared mesh trades it


def order(coid: str) -> opb.PlaceOrderRequest:
    return opb.PlaceOrderRequest(client_order_id=coid, symbol=SYMBOL, side=common_pb2.SIDE_BUY,
                                 type=common_pb2.ORDER_TYPE_LIMIT, quantity=1, limit_price="160.00",
                                 time_in_force=common_pb2.TIME_IN_FORCE_GTC)


def error_info(exc: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    raw = dict(exc.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert raw, f"no status details: {exc.code()} {exc.details()}"
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in status_pb2.Status.FromString(raw).details)
    return info


async def test_a_stopping_order_svc_ends_streams_with_unavailable_and_they_resume(mesh):
    account = f"stream-stop-{uuid.uuid4().hex[:6]}"
    md = mesh.auth(account)
    async with mesh.channel() as ch:
        orders = order_service_pb2_grpc.OrderServiceStub(ch)
        await ledger_service_pb2_grpc.LedgerServiceStub(ch).Deposit(
            lpb.DepositRequest(amount="1000.00", idempotency_key="d"), metadata=md)
        first = (await orders.PlaceOrder(order("o1"), metadata=md)).order

        seen: list[int] = []
        call = orders.StreamOrderUpdates(opb.StreamOrderUpdatesRequest(after_sequence=0), metadata=md)

        async def read() -> None:
            async for u in call:
                seen.append(u.sequence)

        reader = asyncio.create_task(read())
        assert await eventually(lambda: len(seen) >= 1)  # the order's NEW, replayed
        before = mesh.state()
        os.kill(before["pids"]["order_svc"], signal.SIGTERM)
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await asyncio.wait_for(reader, timeout=30)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE, (ended.value.code(), ended.value.details())
        assert "shutting down" in ended.value.details(), ended.value.details()
        info = error_info(ended.value)
        assert info.reason == "SHUTTING_DOWN"
        assert int(info.metadata["afterSequence"]) == int(info.metadata["after_sequence"]) == seen[-1]

        # The launcher restarts it; the client opens the stream again where it stopped.
        assert await eventually(lambda: mesh.state()["restarts"]["order_svc"] > before["restarts"]["order_svc"]
                                and mesh.state()["pids"].get("order_svc") != before["pids"]["order_svc"],
                                timeout=60)

        async def placed_again() -> bool:
            try:
                await orders.PlaceOrder(order("o2"), metadata=md, timeout=5)
                return True
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                return False

        assert await eventually(placed_again, timeout=60)
        resumed = orders.StreamOrderUpdates(opb.StreamOrderUpdatesRequest(after_sequence=seen[-1]), metadata=md)
        try:
            async with asyncio.timeout(30):
                nxt = await resumed.read()
        finally:
            resumed.cancel()
        assert nxt.sequence == seen[-1] + 1
        assert nxt.order.order_id != first.order_id and nxt.order.client_order_id == "o2"
