"""The mesh on a clustered JetStream (`stockmesh up --nats-cluster 3`, as deploy/ runs it):
every stream and bucket has three copies, and a server killed, the leader of the streams an
order crosses, loses nothing. Customers keep trading while it happens: every order acknowledged
before, during and after the kill reaches the book, trades, and is settled in both services;
the launcher restarts the server and it catches up; invariants, the audit trail and the day's
settlement are clean at the end."""
from __future__ import annotations

import asyncio
import os
import signal

import nats.errors
import nats.js.errors
import pytest

from meshkit import bus
from meshkit.launcher.harness import MeshProcess
from tests.support.meshes import assert_consistent_and_settled, own_mesh
from tests.support.trades import filled_and_settled, place_crossing_pair, trading, unsettled
from tests.support.wait import eventually

pytestmark = pytest.mark.e2e
SYMBOL, PRICE = "GOOGL", "172.30"  # the listed reference price: inside the collar with no trade yet
REPLICATED = ("ORDERS", "EXECUTIONS", "MD")


@pytest.fixture
def clustered(tmp_path):
    yield from own_mesh(tmp_path / "mesh", "stockmesh_e2e_cluster", "e2ecl", "--nats-cluster", "3")


async def _infos(js, namespace: str) -> dict[str, object] | None:
    """The mesh's streams (KV and object store buckets included) by name, with their cluster
    view; None while the cluster cannot answer (its meta leader was the server killed)."""
    try:
        return {info.config.name: info for info in await js.streams_info() if namespace in info.config.name}
    except (nats.errors.TimeoutError, nats.js.errors.Error):
        return None


async def _all_created(js, namespace: str) -> dict[str, object] | None:
    """The mesh's streams once the three streams and the engine's two buckets are listed."""
    infos = await _infos(js, namespace)
    if not infos or not all(bus.stream_name(namespace, base) in infos for base in REPLICATED):
        return None
    if not (any(n.startswith("KV_") for n in infos) and any(n.startswith("OBJ_") for n in infos)):
        return None
    return infos


async def _leader(js, namespace: str, base: str) -> str | None:
    """The server leading the stream, once the cluster lists it with one (just after another
    stream's leader was killed, the listing can leave out a stream whose group is still
    choosing)."""
    info = (await _infos(js, namespace) or {}).get(bus.stream_name(namespace, base))
    return info.cluster.leader if info is not None and info.cluster is not None else None


async def _current(js, namespace: str) -> bool:
    """Every stream has a leader and both other copies current."""
    infos = await _infos(js, namespace)
    return infos is not None and all(
        i.cluster and i.cluster.leader and len(i.cluster.replicas or []) == 2
        and all(r.current for r in i.cluster.replicas) for i in infos.values())


async def test_a_cluster_server_killed_under_trading_loses_nothing(clustered: MeshProcess) -> None:
    mesh, ns = clustered, clustered.namespace
    nc = await bus.connect(mesh.state()["nats_url"], "test-cluster")  # all three servers, comma-separated
    js = nc.jetstream()
    placed: dict[str, str] = {}
    failures: list[str] = []
    try:
        # The engine creates its lease and snapshot buckets as its symbols' runners start,
        # which may be after the mesh answers (a slow VM listed the streams alone once).
        infos = await eventually(lambda: _all_created(js, ns), timeout=60) or await _infos(js, ns) or {}
        for base in REPLICATED:
            assert bus.stream_name(ns, base) in infos, sorted(infos)
        assert any(name.startswith("KV_") for name in infos) and any(name.startswith("OBJ_") for name in infos), \
            sorted(infos)  # the engine's lease and snapshot buckets
        assert all(i.config.num_replicas == 3 for i in infos.values()), \
            {n: i.config.num_replicas for n, i in infos.items()}
        assert await eventually(lambda: _current(js, ns), timeout=30)

        async with mesh.channel() as ch:
            first = await place_crossing_pair(mesh, ch, SYMBOL, PRICE, "before")
            assert await eventually(lambda: filled_and_settled(mesh, ch, first), timeout=30), mesh.diagnostics()
            placed.update(first)

            async with trading(mesh, ch, SYMBOL, PRICE, placed, failures):
                for target in ("ORDERS", "EXECUTIONS"):
                    await asyncio.sleep(1.5)
                    leader = await eventually(lambda: _leader(js, ns, target), timeout=30)
                    assert leader, f"no leader of {target} listed\n{mesh.diagnostics()}"
                    victim = mesh.state()["pids"][leader]
                    os.kill(victim, signal.SIGKILL)
                    # The launcher restarts it; it rejoins and catches up with the others.
                    assert await eventually(lambda: mesh.state()["pids"].get(leader) not in (None, victim),
                                            timeout=30), mesh.diagnostics()
                    assert await eventually(lambda: _current(js, ns), timeout=60, delay=0.5), \
                        {n: i.cluster for n, i in ((await _infos(js, ns)) or {}).items()}
                await asyncio.sleep(1.5)
            assert len(placed) >= 8, (len(placed), failures)  # trading went on through both kills

            # Every acknowledged order traded and both services applied its fill.
            if not await eventually(lambda: filled_and_settled(mesh, ch, placed), timeout=90, delay=0.5):
                pytest.fail("\n".join(await unsettled(mesh, ch, placed)) + "\n" + mesh.diagnostics())
    finally:
        await nc.close()
    # (A refusal other than UNAVAILABLE or DEADLINE_EXCEEDED, which clients retry with the same
    # ids, would have ended `trading` with its error.)
    await assert_consistent_and_settled(mesh)
