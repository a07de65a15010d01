"""A service takes request metadata up to Envoy's own limit, every time (round 16: between 8
and 16 KiB gRPC refused some requests at random: its soft limit)."""
from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meshkit.server import MAX_METADATA, App, create_server


async def test_metadata_up_to_envoys_limit_is_taken_every_time():
    server, port, _ = await create_server("127.0.0.1:0", App(name="x", servicers=[]))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}",
                                             options=[("grpc.max_metadata_size", 2 * MAX_METADATA)]) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            for size in (9_000, 12_000, 15_000, 30_000, 59_000):
                for _ in range(10):
                    reply = await stub.Check(health_pb2.HealthCheckRequest(service=""),
                                             metadata=(("x-jwt-payload", "a" * size),), timeout=5)
                    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING, size  # answered: not started
    finally:
        await server.stop(None)


def test_a_request_id_is_the_clients_only_when_it_is_short_printable_ascii():
    """Round 18: a client's x-request-id of any length (up to Envoy's 60 KiB of headers) went
    into every log line of its call; one with control characters too (escaped)."""
    from meshkit import logs
    from meshkit.interceptors import MAX_REQUEST_ID, bind_call

    for kept in ("page-42", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", "x" * MAX_REQUEST_ID):
        bind_call([("x-request-id", kept)])
        assert logs.request_id.get() == kept
    for replaced in ("x" * (MAX_REQUEST_ID + 1), "a" * 50_000, "line\nbreak", "tab\there", "caf\u00e9", ""):
        bind_call([("x-request-id", replaced)])
        mine = logs.request_id.get()
        assert mine != replaced and len(mine) == 32 and int(mine, 16) >= 0  # one of our own
