"""meshkit.channels.internal_channel: a caller finds a restarted service again within about a
second, however long the service was gone (gRPC's own backoff grows to two minutes)."""
from __future__ import annotations

import asyncio
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from meshkit.channels import internal_channel

DOWN_FOR = 10.0  # long enough for gRPC's default backoff to reach ~6 s between attempts


async def _serve(port: int) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, bound


async def _check(stub: health_pb2_grpc.HealthStub) -> bool:
    try:
        await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        return True
    except grpc.aio.AioRpcError as exc:
        assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), exc
        return False


async def test_a_restarted_service_is_found_again_within_the_backoff_bound():
    server, port = await _serve(0)
    channel = internal_channel(f"127.0.0.1:{port}")
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        assert await _check(stub)
        await server.stop(None)
        gone_until = time.monotonic() + DOWN_FOR
        while time.monotonic() < gone_until:  # calls keep coming while it is gone, as orders do
            assert not await _check(stub)
            await asyncio.sleep(0.2)
        server, _ = await _serve(port)
        back = time.monotonic()
        while not await _check(stub):
            await asyncio.sleep(0.05)
            # The bound is the backoff's ceiling (1 s) with room for a slow machine, far below
            # the ~6 s gRPC's default backoff has reached by now.
            assert time.monotonic() - back < 4.0, "the channel did not reconnect to the restarted server"
    finally:
        await channel.close()
        await server.stop(None)
