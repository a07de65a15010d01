"""Crash recovery and the single-writer lease, with the engine as a real subprocess.

* A seeded random flow of 10,000 inputs; the engine is SIGKILLed at random points, restarted,
  and at the end its book hash and the distinct executions (ids and content, in order) equal
  the uninterrupted run: the pure engine driven in-process by the same stored inputs.
* Two instances configured for one symbol: only the lease holder writes; after the holder is
  killed the other takes over, with no gap and no duplicate in the executions.
"""
from __future__ import annotations

import asyncio
import json
import random
import uuid

import grpc
import pytest

from matching_svc.adapters.jetstream import Names, ensure_streams
from meshkit import bus
from stockmesh.matching.v1 import engine_control_service_pb2 as ec, engine_control_service_pb2_grpc
from stockmesh.matching.v1 import matching_pb2 as pb
from tests.support.engine import Flow, distinct, executions, expected_run, kill, start_engine

pytestmark = pytest.mark.integration

SEED = 20240611
TTL = "2"


async def publish_flow(js, ns: str, flow: Flow, count: int) -> int:
    names = Names(ns)
    last = 0
    for start in range(0, count, 500):
        futures = []
        for _ in range(min(500, count - start)):
            cmd, msg_id = flow.next()
            futures.append(await js.publish_async(names.orders_subject(cmd.symbol), cmd.SerializeToString(),
                                                  headers={"Nats-Msg-Id": msg_id}))
        acks = await asyncio.gather(*futures)
        last = max(a.seq for a in acks)
    return last


async def status(port: int, symbol: str) -> ec.SymbolStatus | None:
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            reply = await engine_control_service_pb2_grpc.EngineControlServiceStub(ch).GetEngineStatus(
                ec.GetEngineStatusRequest(), timeout=2)
    except grpc.aio.AioRpcError:
        return None
    return next((s for s in reply.symbols if s.symbol == symbol), None)


async def wait_caught_up(proc, port: int, symbol: str, last_seq: int, timeout: float = 60) -> ec.SymbolStatus:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        assert proc.returncode is None, f"engine exited with {proc.returncode}"
        st = await status(port, symbol)
        if st is not None and st.last_input_sequence >= last_seq:
            return st
        await asyncio.sleep(0.1)
    raise AssertionError(f"engine did not process up to input {last_seq}")


async def caught_up_then_killed(nats_url: str, ns: str, symbol: str, last_seq: int, log, settings: dict
                                ) -> ec.SymbolStatus:
    """Start an engine, wait until it has processed input `last_seq`, SIGKILL it; its status."""
    proc, port = await start_engine(nats_url, ns, log_path=log, **settings)
    try:
        return await wait_caught_up(proc, port, symbol, last_seq)
    finally:
        await kill(proc)  # SIGKILL: no snapshot at shutdown, no lease release


async def stored_inputs(js, names: Names, symbol: str) -> int:
    subject = names.orders_subject(symbol)
    return (await js.stream_info(names.orders, subjects_filter=subject)).state.subjects[subject]


async def stored_count(js, ns: str, symbol: str) -> int:
    names = Names(ns)
    info = await js.stream_info(names.executions, subjects_filter=names.executions_subject(symbol))
    return (info.state.subjects or {}).get(names.executions_subject(symbol), 0)


@pytest.fixture
async def js(nats_url):
    nc = await bus.connect(nats_url, "test-engine-recovery")
    yield nc.jetstream()
    await nc.close()


async def test_sigkill_and_restart_equals_uninterrupted_run(nats_url, js, tmp_path):
    ns, symbol = f"tr{uuid.uuid4().hex[:8]}", "AAPL"
    await ensure_streams(js, Names(ns))
    last_seq = await publish_flow(js, ns, Flow(SEED, symbol), 10_000)
    expected_engine, expected = await expected_run(js, ns, symbol)
    assert {e.type for e in expected} >= {pb.EXECUTION_TYPE_FILL, pb.EXECUTION_TYPE_CANCELLED,
                                          pb.EXECUTION_TYPE_REPLACED, pb.EXECUTION_TYPE_TRIGGERED,
                                          pb.EXECUTION_TYPE_REJECTED, pb.EXECUTION_TYPE_EXPIRED}

    settings = {"ENGINE_SYMBOLS": symbol, "ENGINE_LEASE_TTL_SECONDS": TTL, "ENGINE_SNAPSHOT_EVERY": "700",
                "ENGINE_BATCH": "200"}
    rng = random.Random(SEED)
    kill_points = sorted(rng.sample(range(len(expected) // 20, len(expected) * 19 // 20), 4))
    log = tmp_path / "engine.log"
    kills = 0
    for point in kill_points:
        proc, _ = await start_engine(nats_url, ns, log_path=log, **settings)
        try:
            while await stored_count(js, ns, symbol) < point and proc.returncode is None:
                await asyncio.sleep(0.01)
            assert proc.returncode is None, f"engine exited with {proc.returncode}: {log.read_text()[-2000:]}"
            kills += 1
        finally:
            await kill(proc)  # SIGKILL: no snapshot, no lease release
    assert kills == 4

    final = await caught_up_then_killed(nats_url, ns, symbol, last_seq, log, settings)
    assert final.book_hash == expected_engine.book.state_hash()
    stored = [ex for ex, _ in await executions(js, ns, symbol)]
    assert distinct(stored) == expected  # same ids, same content, same order, nothing missing
    # The inputs older than the previous snapshot were purged (ENGINE_TRIM_INPUTS, on by
    # default): the stream keeps at most about two snapshot intervals (700 inputs, checked
    # after each batch of 200) of this symbol, and the result above did not suffer for it.
    kept = await stored_inputs(js, Names(ns), symbol)
    assert 0 < kept <= 2 * (700 + 200), kept


async def test_a_damaged_snapshot_falls_back_to_the_previous_one(nats_url, js, tmp_path):
    """The newest snapshot cannot be read (damaged by hand here): the engine starts from the
    previous one and replays the inputs since, which trimming kept, to the same book."""
    from matching_svc.adapters.jetstream import SnapshotStore

    ns, symbol = f"ts{uuid.uuid4().hex[:8]}", "MSFT"
    names = Names(ns)
    await ensure_streams(js, names)
    last_seq = await publish_flow(js, ns, Flow(SEED + 2, symbol), 3000)
    expected_engine, _ = await expected_run(js, ns, symbol)
    settings = {"ENGINE_SYMBOLS": symbol, "ENGINE_LEASE_TTL_SECONDS": TTL, "ENGINE_SNAPSHOT_EVERY": "700",
                "ENGINE_BATCH": "200"}
    log = tmp_path / "engine.log"
    await caught_up_then_killed(nats_url, ns, symbol, last_seq, log, settings)  # its snapshots stay as they are
    store = SnapshotStore(js, names)
    head = await store.head(symbol)
    assert head.previous is not None and await store.load(head.previous.name) is not None
    assert await stored_inputs(js, names, symbol) < 3000  # trimmed
    await store.save(head.current.name, b"not a snapshot")

    final = await caught_up_then_killed(nats_url, ns, symbol, last_seq, log, settings)
    assert final.book_hash == expected_engine.book.state_hash()
    assert "snapshot cannot be read; trying the previous one" in log.read_text()


async def test_two_engines_one_writer(nats_url, js, tmp_path):
    ns, symbol = f"tl{uuid.uuid4().hex[:8]}", "TSLA"
    await ensure_streams(js, Names(ns))
    flow = Flow(SEED + 1, symbol)
    first_last = await publish_flow(js, ns, flow, 1500)
    # Every input kept: the expected run below is computed from the stream afterwards.
    settings = {"ENGINE_SYMBOLS": symbol, "ENGINE_LEASE_TTL_SECONDS": TTL, "ENGINE_SNAPSHOT_EVERY": "400",
                "ENGINE_TRIM_INPUTS": "0"}
    a, a_port = await start_engine(nats_url, ns, log_path=tmp_path / "a.log", ENGINE_INSTANCE_ID="A", **settings)
    b = None
    try:
        await wait_caught_up(a, a_port, symbol, first_last)
        b, b_port = await start_engine(nats_url, ns, log_path=tmp_path / "b.log", ENGINE_INSTANCE_ID="B",
                                       **settings)
        kv = await js.key_value(Names(ns).leases)
        assert (await kv.get(symbol)).value == b"A"
        for _ in range(20):  # B is up and polling for the lease, but owns nothing
            await asyncio.sleep(0.1)
        assert await status(b_port, symbol) is None

        await kill(a)  # the holder dies without releasing its lease
        last_seq = await publish_flow(js, ns, flow, 1500)
        final = await wait_caught_up(b, b_port, symbol, last_seq)
        assert (await kv.get(symbol)).value == b"B"
    finally:
        await kill(a)
        if b is not None:
            await kill(b)

    expected_engine, expected = await expected_run(js, ns, symbol)
    assert final.book_hash == expected_engine.book.state_hash()
    stored = await executions(js, ns, symbol)
    assert [ex for ex, _ in stored] == expected  # no gap, and not even a repeat (JetStream's window)
    writers = [(ex.input_sequence <= first_last, headers.get("Engine-Instance")) for ex, headers in stored]
    assert {w for before, w in writers if before} == {"A"}
    assert {w for before, w in writers if not before} == {"B"}


async def test_a_quiet_symbol_is_snapshotted_by_time_so_a_kill_replays_little(nats_url, js, tmp_path):
    """Snapshots came only every 10,000 inputs: a symbol with fewer (most, with the simulator)
    had none, so a kill -9 made the restarted engine replay it from its first input, and the
    outputs of hours of trading were published again (acceptance round 9: 60-100 s to recover,
    leases lost on the way). Now one also comes ENGINE_SNAPSHOT_SECONDS after inputs arrived;
    the restart starts after it."""
    from matching_svc.adapters.jetstream import SnapshotStore
    from matching_svc.service_layer.engine import SymbolEngine
    from tests.support.wait import eventually

    ns, symbol = f"ts{uuid.uuid4().hex[:8]}", "KO"
    names = Names(ns)
    await ensure_streams(js, names)
    last_seq = await publish_flow(js, ns, Flow(SEED + 2, symbol), 300)
    store = SnapshotStore(js, names)
    settings = {"ENGINE_SYMBOLS": symbol, "ENGINE_LEASE_TTL_SECONDS": TTL, "ENGINE_SNAPSHOT_EVERY": "10000",
                "ENGINE_SNAPSHOT_SECONDS": "1"}
    proc, port = await start_engine(nats_url, ns, log_path=tmp_path / "a.log", **settings)
    try:
        await wait_caught_up(proc, port, symbol, last_seq)

        async def snapshotted() -> bool:
            head = await store.head(symbol)
            blob = None if head is None else await store.load(head.current.name)
            return blob is not None and SymbolEngine.from_bytes(blob).last_seq == last_seq
        assert await eventually(snapshotted, timeout=30)
    finally:
        await kill(proc)  # SIGKILL: no snapshot at shutdown
    proc, port = await start_engine(nats_url, ns, log_path=tmp_path / "b.log", LOG_LEVEL="INFO", **settings)
    try:
        await wait_caught_up(proc, port, symbol, last_seq)
    finally:
        await kill(proc)
    started = [json.loads(line) for line in (tmp_path / "b.log").read_text().splitlines()
               if '"engine started"' in line]
    assert [r["from_sequence"] for r in started] == [last_seq + 1], started
