"""A service's health has two faces: readiness ("" and each service name: SERVING only while
its dependencies answer) and liveness (LIVENESS: SERVING while the process answers at all).
A liveness probe that followed the dependencies would restart every pod while NATS is out
(acceptance round 12: deploy/k8s probed liveness with the readiness check)."""
from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meshkit.server import LIVENESS, App, create_server, watch_health
from tests.support.wait import eventually


async def test_liveness_is_serving_while_a_dependency_is_down():
    nats = {"up": True}

    async def nats_check() -> None:
        if not nats["up"]:
            raise ConnectionError("NATS does not answer")

    app = App(name="probe_svc", servicers=[], checks=[nats_check])
    server, port, health = await create_server("127.0.0.1:0", app)
    await server.start()
    watcher = asyncio.create_task(watch_health(health, app))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)

            async def ready_is(status) -> bool:
                return (await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)).status == status
            # Ready once the checks pass; then NATS goes, and readiness follows it.
            assert await eventually(lambda: ready_is(health_pb2.HealthCheckResponse.SERVING), timeout=30)
            nats["up"] = False
            assert await eventually(lambda: ready_is(health_pb2.HealthCheckResponse.NOT_SERVING), timeout=30)
            alive = await stub.Check(health_pb2.HealthCheckRequest(service=LIVENESS), timeout=5)
        assert alive.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        watcher.cancel()
        await server.stop(None)


def test_a_connection_rolled_back_by_its_pool_is_a_warning_and_anything_else_goes_to_the_loop(caplog):
    """Round 17: a call cancelled by its client's deadline mid-transaction made asyncpg's pool
    roll its connection back, reported through the loop's handler as an ERROR with a traceback
    (55 of them for a client's 3 ms deadlines)."""
    import asyncio
    import logging

    from meshkit.server import loop_exception

    loop = asyncio.new_event_loop()
    passed: list[dict] = []
    loop.default_exception_handler = passed.append  # type: ignore[method-assign]
    try:
        with caplog.at_level(logging.WARNING, logger="meshkit"):
            loop_exception(loop, {"message": "Resetting connection with an active transaction <asyncpg...>"})
            loop_exception(loop, {"message": "Task exception was never retrieved"})
    finally:
        loop.close()
    [record] = [r for r in caplog.records if "mid-transaction" in r.getMessage()]
    assert record.levelname == "WARNING"
    assert passed == [{"message": "Task exception was never retrieved"}]


async def test_a_soft_check_that_fails_is_logged_and_the_service_stays_serving(caplog):
    """App.soft_checks: dependencies only background work needs (the ledger's execution
    consumer's NATS). Their failure is a warning as it starts and a note as it ends, never
    NOT_SERVING: the service's calls are answered without them (round 22)."""
    import logging

    nats = {"up": False}

    async def nats_check() -> None:
        if not nats["up"]:
            raise ConnectionError("NATS does not answer")

    caplog.set_level(logging.INFO, logger="meshkit.server")
    app = App(name="probe_svc", servicers=[], soft_checks=[nats_check])
    server, port, health = await create_server("127.0.0.1:0", app)
    await server.start()
    watcher = asyncio.create_task(watch_health(health, app))

    def said(words: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage().startswith(words)]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)

            async def serving() -> bool:
                status = (await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)).status
                return status == health_pb2.HealthCheckResponse.SERVING
            assert await eventually(serving, timeout=30)
            assert await eventually(lambda: said("degraded"), timeout=30)
            [warned] = said("degraded")
            assert warned.levelname == "WARNING" and "NATS does not answer" in warned.problem
            nats["up"] = True
            assert await eventually(lambda: said("no longer degraded"), timeout=30)
            assert await serving()
            assert len(said("degraded")) == 1  # once as it started, not on every check
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await server.stop(None)
