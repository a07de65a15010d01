"""meshkit.channels.internal_channel: a caller finds a restarted service again within about a
second, however long the service was gone (gRPC's own backoff grows to two minutes)."""
from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from meshkit.channels import internal_channel
from tests.support.wait import eventually

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
    """While the service is gone, a stand-in on its port accepts each connection and closes it
    at once (a failed attempt, as gRPC sees it) and counts them: the channel keeps trying about
    once a second (its backoff: 0.1 s growing to 1 s, some fourteen attempts in DOWN_FOR),
    where gRPC's default backoff (1 s growing by 1.6) makes five, the last some 4 s before a
    restarted service would be found. What is counted is attempts, not time."""
    server, port = await _serve(0)
    channel = internal_channel(f"127.0.0.1:{port}")
    stub = health_pb2_grpc.HealthStub(channel)
    attempts = 0

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal attempts
        attempts += 1
        writer.close()

    try:
        assert await _check(stub)
        await server.stop(None)
        stand_in = await asyncio.start_server(refuse, "127.0.0.1", port)
        loop = asyncio.get_running_loop()
        gone_until = loop.time() + DOWN_FOR
        while loop.time() < gone_until:  # calls keep coming while it is gone, as orders do
            assert not await _check(stub)
            await asyncio.sleep(0.2)
        stand_in.close()
        await stand_in.wait_closed()
        assert attempts >= 10, f"{attempts} connection attempts in {DOWN_FOR:.0f} s: the backoff grew past 1 s"
        server, _ = await _serve(port)
        assert await eventually(lambda: _check(stub), timeout=30), "the channel did not reconnect to the restarted server"
    finally:
        await channel.close()
        await server.stop(None)


async def test_a_target_of_replicas_takes_every_call_while_one_of_them_is_gone():
    """The launcher's LEDGER_ADDR / ORDER_ADDR name every replica ("ipv4:A,B"); the channel goes
    round the ready ones, so the holds and open-order reads need only one replica (acceptance
    round 13: pinned to the first, they failed while it restarted). Both replicas answer while
    both run; with one stopped, the other takes the calls."""
    from meshkit.launcher.mesh import internal_target

    class Counted(health.aio.HealthServicer):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        async def Check(self, request, context):
            self.calls += 1
            return await super().Check(request, context)

    servers, counted = [], []
    for _ in range(2):
        server, servicer = grpc.aio.server(), Counted()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append((server, port))
        counted.append(servicer)
    assert internal_target([servers[0][1]]) == f"127.0.0.1:{servers[0][1]}"
    target = internal_target([p for _, p in servers])
    assert target == f"ipv4:127.0.0.1:{servers[0][1]},127.0.0.1:{servers[1][1]}"
    channel = internal_channel(target)
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        for _ in range(20):
            assert await _check(stub)
        assert counted[0].calls and counted[1].calls  # round the two
        await servers[0][0].stop(None)  # a graceful stop: the channel hears its GOAWAY
        results = [await _check(stub) for _ in range(20)]
        assert all(results), results
    finally:
        await channel.close()
        for server, _ in servers:
            await server.stop(None)


# A replica that dies mid-call (SIGKILL: its connection reset under the call), in a process of
# its own: it answers health checks, and one asking for service "die" kills it.
_DYING_REPLICA = """
import asyncio, os, signal, sys
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

class Dying(health.aio.HealthServicer):
    async def Check(self, request, context):
        print("call", request.service, flush=True)
        if request.service == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

async def main():
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(Dying(), server)
    print(server.add_insecure_port("127.0.0.1:0"), flush=True)
    await server.start()
    await server.wait_for_termination()

asyncio.run(main())
"""


async def test_a_call_on_a_replica_killed_under_it_is_answered_by_the_other():
    """Round 26 explorer: with two ledger_svc replicas, a SIGKILL of one failed the placements
    in flight on it UNAVAILABLE, which the other could have answered (every internal call is
    idempotent). The channel sends such a call again, to the next ready replica."""
    import subprocess
    import sys

    from meshkit.launcher.mesh import internal_target

    class Answering(health.aio.HealthServicer):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[str] = []

        async def Check(self, request, context):
            self.calls.append(request.service)
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    dying = subprocess.Popen([sys.executable, "-c", _DYING_REPLICA], stdout=subprocess.PIPE, text=True)
    server, answering = grpc.aio.server(), Answering()
    health_pb2_grpc.add_HealthServicer_to_server(answering, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = None
    try:
        dying_port = int(dying.stdout.readline())
        channel = internal_channel(internal_target([dying_port, port]))
        stub = health_pb2_grpc.HealthStub(channel)
        made = 0  # until the channel goes round both (the dying one connected too)
        while made == len(answering.calls) and made < 200:
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            made += 1
            await asyncio.sleep(0.01)
        assert made > len(answering.calls), "the calls did not go round both replicas"
        for _ in range(4):  # one of them reaches the dying replica, which dies under it
            reply = await stub.Check(health_pb2.HealthCheckRequest(service="die"), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert dying.wait(timeout=10) == -9  # it did die under a call
        assert answering.calls.count("die") == 4, answering.calls  # each answered by the other
    finally:
        if dying.poll() is None:
            dying.kill()
        dying.wait()
        if channel is not None:
            await channel.close()
        await server.stop(None)


async def test_a_status_the_service_answers_itself_is_not_sent_again():
    """The ledger's own UNAVAILABLE (ACCOUNT_BUSY: an account held past its lock wait) reaches
    the customer at once with its RetryInfo: the channel retries transport failures only."""
    from meshkit.errors import Unavailable
    from meshkit.interceptors import ServiceInterceptor

    class Busy(health.aio.HealthServicer):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        async def Check(self, request, context):
            self.calls += 1
            raise Unavailable("account a1 is busy; retry shortly", reason="ACCOUNT_BUSY", retry_after_seconds=1)

    server, busy = grpc.aio.server(interceptors=[ServiceInterceptor()]), Busy()
    health_pb2_grpc.add_HealthServicer_to_server(busy, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = internal_channel(f"127.0.0.1:{port}")
    try:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            raise AssertionError("answered")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE and "busy" in exc.details(), exc
        assert busy.calls == 1
    finally:
        await channel.close()
        await server.stop(None)


async def test_statuses_the_service_answers_itself_do_not_spend_the_transport_retries():
    """Review of round 26: gRPC's retry throttle counts every UNAVAILABLE attempt as a failure
    before it looks at the pushback, so the ledger's own ACCOUNT_BUSY / DATABASE_UNAVAILABLE
    answers (never sent again) spend the tokens the transport retries need: after a handful of
    them, a call whose replica died under it is no longer sent again, until ~50 calls succeeded. There is no throttle."""
    from meshkit.errors import Unavailable
    from meshkit.interceptors import ServiceInterceptor

    class Servicer(health.aio.HealthServicer):
        def __init__(self) -> None:
            super().__init__()
            self.flaky = 0

        async def Check(self, request, context):
            if request.service == "busy":
                raise Unavailable("account a1 is busy; retry shortly", reason="ACCOUNT_BUSY", retry_after_seconds=1)
            self.flaky += 1
            if self.flaky % 2:  # every other attempt fails as a transport failure would (no pushback)
                await context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    server, servicer = grpc.aio.server(interceptors=[ServiceInterceptor()]), Servicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = internal_channel(f"127.0.0.1:{port}")
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        await stub.Check(health_pb2.HealthCheckRequest(service="flaky"), timeout=5)  # sent again: answered
        for _ in range(6):
            try:
                await stub.Check(health_pb2.HealthCheckRequest(service="busy"), timeout=5)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
        await stub.Check(health_pb2.HealthCheckRequest(service="flaky"), timeout=5)  # sent again still?
    finally:
        await channel.close()
        await server.stop(None)
