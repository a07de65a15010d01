"""ledger_svc and order_svc as replicas behind Envoy, as deploy/ runs them (`stockmesh up
--replicas ledger_svc=2 --replicas order_svc=2`): every replica serves calls, exactly one of
each service applies the execution journal (elected in PostgreSQL), and when that one is
SIGKILLed under trading another takes over. Every order acknowledged before, during and
after trades and is settled in both services; invariants, the audit trail and the day's
settlement are clean at the end."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import urllib.request

import grpc
import pytest

from meshkit.launcher.harness import MeshProcess
from meshkit.status import POSITION_HEADER
from stockmesh.order.v1 import order_service_pb2 as opb, order_service_pb2_grpc
from tests.support.meshes import assert_consistent_and_settled, own_mesh
from tests.support.trades import filled_and_settled, place_crossing_pair, trading, unsettled
from tests.support.wait import eventually

pytestmark = pytest.mark.e2e
SYMBOL, PRICE = "MSFT", "415.50"  # the listed reference price: inside the collar with no trade yet
REPLICAS = {"ledger_svc": "ledger", "order_svc": "orders"}  # service -> its execution consumer's durable


@pytest.fixture
def replicated(tmp_path):
    yield from own_mesh(tmp_path / "mesh", "stockmesh_e2e_replicas", "e2erp",
                        *[a for s in REPLICAS for a in ("--replicas", f"{s}=2")])


def _metric(port: int, name: str) -> dict[str, float]:
    """label text -> value of one metric on a process's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(rf"^{name}{{(.*?)}} (\S+)$", text, re.M)}


def _elected(mesh: MeshProcess, service: str) -> list[str]:
    """The processes of `service` that hold its execution consumer's election right now."""
    role = f'role="{mesh.namespace}.executions.{REPLICAS[service]}"'
    found = []
    for name in (service, f"{service}-2"):
        try:
            if _metric(mesh.state()["metrics_ports"][name], "stockmesh_elected").get(role) == 1.0:
                found.append(name)
        except OSError:  # killed, or restarting
            continue
    return found


async def test_the_elected_replica_killed_under_trading_loses_nothing(replicated: MeshProcess) -> None:
    mesh = replicated
    for service in REPLICAS:
        assert await eventually(lambda: len(_elected(mesh, service)) == 1, timeout=30), \
            (service, _elected(mesh, service))
    await asyncio.sleep(2.5)  # two elections' polls later: still one each
    assert all(len(_elected(mesh, service)) == 1 for service in REPLICAS)
    placed: dict[str, str] = {}
    failures: list[str] = []
    async with mesh.channel() as ch:
        first = await place_crossing_pair(mesh, ch, SYMBOL, PRICE, "before")
        assert await eventually(lambda: filled_and_settled(mesh, ch, first), timeout=30), mesh.diagnostics()
        placed.update(first)

        most = {service: 0 for service in REPLICAS}  # the most replicas of a service elected at once

        async def watch() -> None:
            while True:
                for service in REPLICAS:
                    most[service] = max(most[service], len(_elected(mesh, service)))
                await asyncio.sleep(0.1)

        opens: list[str] = []  # how each StreamOrderUpdates opened while order_svc lost a replica

        async def open_streams() -> None:
            stub = order_service_pb2_grpc.OrderServiceStub(ch)
            while True:
                call = stub.StreamOrderUpdates(opb.StreamOrderUpdatesRequest(from_now=True),
                                               metadata=mesh.auth("stream-opener"), timeout=10)
                try:
                    headers = dict(await call.initial_metadata() or ())
                    opens.append("OK" if POSITION_HEADER in headers else (await call.code()).name)
                except grpc.aio.AioRpcError as exc:
                    opens.append(exc.code().name)
                finally:
                    call.cancel()
                await asyncio.sleep(0.02)

        watcher = asyncio.create_task(watch())
        async with trading(mesh, ch, SYMBOL, PRICE, placed, failures):
            for service in REPLICAS:
                await asyncio.sleep(1.5)
                [leader] = _elected(mesh, service)
                victim = mesh.state()["pids"][leader]
                opener = asyncio.create_task(open_streams()) if service == "order_svc" else None
                if opener is not None:  # opening streams before the kill
                    assert await eventually(lambda: opens, timeout=15), "no stream opened before the kill"
                os.kill(victim, signal.SIGKILL)
                # Another process takes the journal over: the other replica, or the one killed
                # once the launcher has restarted it, whichever asks first after the lock died
                # with the victim's connection (tests/integration/test_election.py shows the
                # other replica taking over on its own).
                assert await eventually(lambda: [mesh.state()["pids"].get(n) for n in _elected(mesh, service)]
                                        not in ([], [victim]), timeout=15), \
                    (service, _elected(mesh, service), mesh.diagnostics())
                assert await eventually(lambda: mesh.state()["pids"].get(leader) not in (None, victim), timeout=30)
                if opener is not None:
                    opener.cancel()
                    await asyncio.gather(opener, return_exceptions=True)
            await asyncio.sleep(1.5)
        watcher.cancel()
        # Opening a stream is safe to send again before it answers: an open sent to the replica
        # that had just died went to the other one (round 23 chaos: UNAVAILABLE "not answering"
        # for half a second, StreamOrderUpdates' route had no retry policy, StreamQuotes' had).
        assert opens and set(opens) == {"OK"}, {code: opens.count(code) for code in set(opens)}
        assert len(placed) >= 8, (len(placed), failures)  # trading went on through both kills
        assert most == {service: 1 for service in REPLICAS}, most  # never two applying the journal
        for service in REPLICAS:
            assert len(_elected(mesh, service)) == 1, (service, _elected(mesh, service))

        if not await eventually(lambda: filled_and_settled(mesh, ch, placed), timeout=90, delay=0.5):
            pytest.fail("\n".join(await unsettled(mesh, ch, placed)) + "\n" + mesh.diagnostics())
    # (A placement on a replica killed mid-call must be a refusal clients retry with the same ids,
    # UNAVAILABLE or DEADLINE_EXCEEDED: any other error would have ended `trading` with it.)
    await assert_consistent_and_settled(mesh)
