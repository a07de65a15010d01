"""A service's health has two faces: readiness ("" and each service name: SERVING only while
its dependencies answer) and liveness (LIVENESS: SERVING while the process answers at all).
A liveness probe that followed the dependencies would restart every pod while NATS is out
(acceptance round 12: deploy/k8s probed liveness with the readiness check)."""
from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meshkit.server import LIVENESS, App, create_server, watch_health


async def test_liveness_is_serving_while_a_dependency_is_down():
    async def nats_down() -> None:
        raise ConnectionError("NATS does not answer")

    app = App(name="probe_svc", servicers=[], checks=[nats_down])
    server, port, health = await create_server("127.0.0.1:0", app)
    await server.start()
    watcher = asyncio.create_task(watch_health(health, app))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            await asyncio.sleep(0.3)  # a round of the checks
            ready = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            alive = await stub.Check(health_pb2.HealthCheckRequest(service=LIVENESS), timeout=5)
        assert ready.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert alive.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        watcher.cancel()
        await server.stop(None)
