"""meshkit.executions.consume: one durable consumer per symbol. An execution that cannot be
applied stops its own symbol only (retried in place, never skipped, its symbol's later ones
wait behind it), and a journal read so far by the single shared consumer of earlier versions is
taken over by the symbols' consumers where it stood."""
from __future__ import annotations

import asyncio
import uuid

import pytest

from meshkit import bus, executions
from stockmesh.matching.v1 import matching_pb2
from tests.support.wait import eventually, executions_drained

pytestmark = pytest.mark.integration


async def _publish(js, ns: str, symbol: str, execution_id: str) -> int:
    ex = matching_pb2.Execution(execution_id=execution_id, symbol=symbol, type=matching_pb2.EXECUTION_TYPE_CANCELLED,
                                order_id=f"o-{execution_id}", account_id="a-1")
    ack = await js.publish(bus.subject(ns, "executions", symbol), ex.SerializeToString(),
                           headers={"Nats-Msg-Id": execution_id})
    return ack.seq


async def _cli(*args: str, code: int = 0) -> str:
    import sys

    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "meshkit.cli", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == code, out.decode() + err.decode()
    return out.decode()


async def _stop(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_an_execution_that_cannot_apply_stops_only_its_own_symbol(nats_conn, nats_url):
    js = nats_conn.jetstream()
    ns = f"ex{uuid.uuid4().hex[:8]}"
    await bus.ensure_stream(js, ns, "EXECUTIONS")
    applied: list[str] = []
    broken = {"A1"}  # fails until the test mends it

    async def apply(ex: executions.Execution) -> None:
        if ex.execution_id in broken:
            raise RuntimeError("cannot apply this one yet")
        applied.append(ex.execution_id)

    for symbol, execution_id in (("AAA", "A1"), ("AAA", "A2"), ("BBB", "B1"), ("BBB", "B2")):
        await _publish(js, ns, symbol, execution_id)
    task = asyncio.create_task(executions.consume(js, ns, "svc", apply, symbols=["AAA", "BBB"]))
    try:
        assert await eventually(lambda: applied == ["B1", "B2"]), applied  # BBB goes on without AAA
        await _publish(js, ns, "BBB", "B3")
        assert await eventually(lambda: "B3" in applied), applied
        assert "A2" not in applied  # AAA's later execution waits behind the one failing
        # Operators see which symbol is behind: `stockmesh consumers --behind`, exit 1 while any
        # is (explorer, round 26: exit 0 either way, so a backup script had to parse the output).
        options = ("consumers", "--nats-url", nats_url, "--namespace", ns, "--behind")
        shown = await _cli(*options, code=1)
        behind = {line.split()[1]: line.split()[2:4] for line in shown.splitlines()[1:-1]}
        assert list(behind) == ["svc_AAA"] and behind["svc_AAA"] == ["0", "2"], shown  # A1, A2 taken, not acked
        assert shown.splitlines()[-1] == "1 of 2 durable consumers behind", shown
        broken.clear()
        assert await eventually(lambda: "A2" in applied), applied
        assert await executions_drained(js, ns, "svc", ["AAA", "BBB"]), applied
        shown = await _cli(*options)  # exit 0: none behind
        assert shown.splitlines() == ["0 of 2 durable consumers behind"], shown  # no header over nothing
    finally:
        await _stop(task)
    assert [e for e in applied if e.startswith("A")] == ["A1", "A2"]  # in its symbol's order, each once
    assert [e for e in applied if e.startswith("B")] == ["B1", "B2", "B3"]
    stream = bus.stream_name(ns, "EXECUTIONS")
    for symbol in ("AAA", "BBB"):
        info = await js.consumer_info(stream, executions.consumer_name("svc", symbol))
        assert info.config.filter_subject == bus.subject(ns, "executions", symbol)


async def test_the_shared_consumer_of_earlier_versions_is_split_where_it_stood(nats_conn):
    import nats.js.errors

    js = nats_conn.jetstream()
    ns = f"ex{uuid.uuid4().hex[:8]}"
    stream = await bus.ensure_stream(js, ns, "EXECUTIONS")
    # An earlier version's consumer of every symbol, which applied and acked the first three.
    await js.add_consumer(stream, config=bus.consumer_config(bus.subject(ns, "executions", ">"), "svc"))
    for symbol, execution_id in (("AAA", "A1"), ("BBB", "B1"), ("AAA", "A2")):
        await _publish(js, ns, symbol, execution_id)
    old = await js.pull_subscribe_bind(durable="svc", stream=stream)
    for msg in await old.fetch(3, timeout=5):
        await msg.ack()
    await old.unsubscribe()
    assert await eventually(lambda: _acked_up_to(js, stream, "svc", 3), timeout=5)
    for symbol, execution_id in (("BBB", "B2"), ("AAA", "A3"), ("CCC", "C1")):
        await _publish(js, ns, symbol, execution_id)

    applied: list[str] = []

    async def apply(ex: executions.Execution) -> None:
        applied.append(ex.execution_id)

    task = asyncio.create_task(executions.consume(js, ns, "svc", apply, symbols=["AAA", "BBB", "CCC"]))
    try:
        assert await eventually(lambda: len(applied) >= 3), applied
        # Once every symbol's consumer has acked all it was given, nothing more comes: what the
        # shared consumer had acked is not read again.
        assert await executions_drained(js, ns, "svc", ["AAA", "BBB", "CCC"]), applied
    finally:
        await _stop(task)
    assert sorted(applied) == ["A3", "B2", "C1"]
    with pytest.raises(nats.js.errors.NotFoundError):
        await js.consumer_info(stream, "svc")  # the shared consumer is gone
    # Started again (e.g. after a restart), the symbols' consumers go on from their own ack floors.
    await _publish(js, ns, "AAA", "A4")
    task = asyncio.create_task(executions.consume(js, ns, "svc", apply, symbols=["AAA", "BBB", "CCC"]))
    try:
        assert await eventually(lambda: "A4" in applied), applied
        assert await executions_drained(js, ns, "svc", ["AAA", "BBB", "CCC"]), applied
    finally:
        await _stop(task)
    assert sorted(applied) == ["A3", "A4", "B2", "C1"]


async def _acked_up_to(js, stream: str, durable: str, seq: int) -> bool:
    return (await js.consumer_info(stream, durable)).ack_floor.stream_seq == seq


async def test_a_symbol_taken_off_the_listing_keeps_its_consumer(nats_conn):
    """Executions of a symbol delisted while some were still waiting are applied all the same:
    a consumer found on the stream is read whether or not its symbol is listed."""
    js = nats_conn.jetstream()
    ns = f"ex{uuid.uuid4().hex[:8]}"
    await bus.ensure_stream(js, ns, "EXECUTIONS")
    applied: list[str] = []

    async def apply(ex: executions.Execution) -> None:
        applied.append(ex.execution_id)

    task = asyncio.create_task(executions.consume(js, ns, "svc", apply, symbols=["AAA", "OLD"]))
    try:
        await _publish(js, ns, "OLD", "O1")
        assert await eventually(lambda: applied == ["O1"]), applied
    finally:
        await _stop(task)
    await _publish(js, ns, "OLD", "O2")  # while no service runs; OLD is delisted meanwhile
    task = asyncio.create_task(executions.consume(js, ns, "svc", apply, symbols=["AAA"]))
    try:
        assert await eventually(lambda: applied == ["O1", "O2"]), applied
    finally:
        await _stop(task)


async def test_apply_batch_takes_a_backlog_in_stream_order_a_batch_at_a_time(nats_conn):
    """With apply_batch, a consumer behind gets what has come in lists (at most `batch`, in
    stream order, each execution once); a list that fails comes again whole."""
    js = nats_conn.jetstream()
    ns = f"ex{uuid.uuid4().hex[:8]}"
    await bus.ensure_stream(js, ns, "EXECUTIONS")
    ids = [f"E{i:03d}" for i in range(100)]
    for execution_id in ids:
        await _publish(js, ns, "AAA", execution_id)
    batches: list[list[str]] = []
    failed_once: list[list[str]] = []

    async def apply_batch(exs: list[executions.Execution]) -> None:
        got = [ex.execution_id for ex in exs]
        if len(batches) == 1 and not failed_once:  # the second list fails once
            failed_once.append(got)
            raise RuntimeError("not this time")
        batches.append(got)

    task = asyncio.create_task(executions.consume(js, ns, "svc", apply_batch=apply_batch, batch=16,
                                                  symbols=["AAA"]))
    try:
        assert await eventually(lambda: sum(map(len, batches)) >= len(ids)), batches
        assert [i for b in batches for i in b] == ids  # in order, each once
        assert max(map(len, batches)) <= 16 and len(batches) < len(ids)  # a backlog goes in lists
        assert failed_once and batches[1][0] == failed_once[0][0]  # the failed list came again from its start
    finally:
        await _stop(task)
    with pytest.raises(TypeError):
        await executions.consume(js, ns, "svc", lambda ex: None, apply_batch=apply_batch)
