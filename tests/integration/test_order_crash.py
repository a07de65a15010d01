"""Fault injection: order_svc is SIGKILLed at every step boundary of the placement saga
(a failpoint), restarted, and afterwards every order and hold is consistent."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
import uuid
from decimal import Decimal

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ledger_svc.service_layer import commands, handlers as ledger
from ledger_svc.service_layer.unit_of_work import LedgerUnitOfWork
from meshkit import bus
from meshkit.launcher.net import free_port
from stockmesh.common.v1 import common_pb2
from stockmesh.order.v1 import order_service_pb2 as pb, order_service_pb2_grpc
from tests.support.wait import eventually

pytestmark = pytest.mark.integration

FAILPOINTS = ["place.after_record", "place.after_hold", "place.after_accept", "relay.after_publish"]


def identity(account: str) -> tuple[tuple[str, str], ...]:
    payload = base64.urlsafe_b64encode(json.dumps({"sub": account}).encode()).decode().rstrip("=")
    return (("x-jwt-payload", payload),)


async def start_order_svc(env: dict[str, str], port: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "order_svc", env=env,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for _ in range(200):
            try:
                r = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return proc
            except grpc.aio.AioRpcError:
                pass
            if proc.returncode is not None:
                raise RuntimeError(f"order_svc exited with {proc.returncode}")
            await asyncio.sleep(0.1)
    raise RuntimeError("order_svc did not become SERVING")


@pytest.mark.parametrize("failpoint", FAILPOINTS)
async def test_killed_at_every_step_boundary_then_recovered(failpoint, checked_pool, database_url, nats_url,
                                                            nats_conn, namespace, ledger_addr):
    account = f"crash-{uuid.uuid4().hex[:8]}"
    await ledger.deposit(commands.Deposit(account, Decimal("1000.00"), "fund"), lambda: LedgerUnitOfWork(checked_pool))
    port = free_port()
    env = {**os.environ, "GRPC_LISTEN": f"127.0.0.1:{port}", "DATABASE_URL": database_url, "NATS_URL": nats_url,
           "LEDGER_ADDR": ledger_addr, "STOCKMESH_NAMESPACE": namespace, "STOCKMESH_MARKET_ALWAYS_OPEN": "1",
           "LOG_LEVEL": "WARNING"}
    env.pop("REDIS_URL", None)
    request = pb.PlaceOrderRequest(client_order_id="crash-1", symbol="V", side=common_pb2.SIDE_BUY,
                                   type=common_pb2.ORDER_TYPE_LIMIT, quantity=2, limit_price="276.90",
                                   time_in_force=common_pb2.TIME_IN_FORCE_GTC)

    proc = await start_order_svc({**env, "STOCKMESH_FAILPOINTS": failpoint}, port)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            await order_service_pb2_grpc.OrderServiceStub(ch).PlaceOrder(request, metadata=identity(account), timeout=10)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN)
    assert await asyncio.wait_for(proc.wait(), timeout=20) == -signal.SIGKILL

    proc = await start_order_svc(env, port)  # the same process, restarted without the failpoint
    try:
        async def settled():
            async with checked_pool.acquire() as conn:
                row = await conn.fetchrow("SELECT order_id, status FROM orders.orders WHERE account_id = $1", account)
                unpublished = await conn.fetchval("SELECT count(*) FROM orders.outbox WHERE published_at IS NULL")
            return row if row and row["status"] == "NEW" and unpublished == 0 else None

        row = await eventually(settled)
        assert row is not None, f"order not recovered after a kill at {failpoint}"
        order_id = str(row["order_id"])
        async with checked_pool.acquire() as conn:
            hold = await conn.fetchrow("SELECT amount, status FROM ledger.holds WHERE hold_id = $1", order_id)
            assert await conn.fetchval("SELECT count(*) FROM orders.orders WHERE account_id = $1", account) == 1
        assert hold is not None and hold["amount"] == Decimal("553.80") and hold["status"] == "PENDING"
        # The client's retry returns the very same order.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            reply = await order_service_pb2_grpc.OrderServiceStub(ch).PlaceOrder(
                request, metadata=identity(account), timeout=10)
        assert reply.order.order_id == order_id and reply.order.status == common_pb2.ORDER_STATUS_NEW
        # JetStream holds the engine command exactly once (Nats-Msg-Id dedupe).
        js = nats_conn.jetstream()
        sub = await js.pull_subscribe(bus.subject(namespace, "orders", "V"), durable=None,
                                      stream=bus.stream_name(namespace, "ORDERS"))
        ids = []
        try:
            while True:
                ids += [m.headers["Nats-Msg-Id"] for m in await sub.fetch(50, timeout=0.5)]
        except asyncio.TimeoutError:
            pass
        await sub.unsubscribe()
        assert ids.count(order_id) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), timeout=20)
