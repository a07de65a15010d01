"""meshkit.batching.Batcher: alone at once, concurrent callers share flushes, errors reach the
right callers."""
from __future__ import annotations

import asyncio

import pytest

from prometheus_client import REGISTRY

from meshkit.batching import Batcher
from meshkit.errors import Unavailable


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def flush(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        await self.gate.wait()
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]


async def test_a_call_alone_goes_at_once_and_later_callers_share_the_next_flush():
    r = Recorder()
    b = Batcher(r.flush, in_flight=1, max_batch=4, name="test_sizes")
    assert await b.submit(1) == 10 and r.batches == [[1]]
    r.gate.clear()
    first = asyncio.ensure_future(b.submit(2))
    await asyncio.sleep(0)
    rest = [asyncio.ensure_future(b.submit(i)) for i in range(3, 9)]  # wait while [2] is in flight
    await asyncio.sleep(0)
    r.gate.set()
    assert await first == 20 and await asyncio.gather(*rest) == [30, 40, 50, 60, 70, 80]
    assert r.batches == [[1], [2], [3, 4, 5, 6], [7, 8]]  # at most max_batch per flush
    assert b.batches == 4
    sizes = {s.labels["le"]: s.value for m in REGISTRY.collect() if m.name == "stockmesh_batch_size"
             for s in m.samples if s.name.endswith("_bucket") and s.labels["batcher"] == "test_sizes"}
    assert (sizes["1.0"], sizes["2.0"], sizes["4.0"]) == (2, 3, 4)  # cumulative: sizes 1, 1, 4 and 2


def _waits(batcher: str) -> dict[str, float]:
    return {s.name.removeprefix("stockmesh_batch_wait_seconds_"): s.value for m in REGISTRY.collect()
            if m.name == "stockmesh_batch_wait_seconds" for s in m.samples
            if s.labels["batcher"] == batcher and not s.name.endswith("_bucket")}


async def test_each_callers_wait_for_its_answer_is_observed_errors_included():
    r = Recorder()
    r.gate.clear()
    b = Batcher(r.flush, in_flight=1, name="test_waits")
    calls = [asyncio.ensure_future(b.submit(i)) for i in (1, -2, 3)]
    await asyncio.sleep(0)
    assert _waits("test_waits").get("count", 0) == 0  # nobody answered yet
    await asyncio.sleep(0.01)  # the flush in flight holds them all
    r.gate.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[0] == 10 and isinstance(results[1], ValueError) and results[2] == 30
    waits = _waits("test_waits")
    assert waits["count"] == 3  # one per caller, the refused one too
    assert waits["sum"] >= 3 * 0.01  # each waited at least as long as the gate was closed


async def test_a_caller_woken_by_the_last_answer_of_a_flush_can_submit_at_once():
    # The finished sender must not still count as in flight when that caller submits (it did,
    # until its done callback ran a loop turn later, and the next item waited for ever).
    b = Batcher(Recorder().flush, in_flight=1)
    async with asyncio.timeout(5):  # a guard against hanging, in this task (wait_for would add one)
        for i in range(3):
            assert await b.submit(i) == i * 10


async def test_in_flight_bounds_the_concurrent_flushes():
    r = Recorder()
    r.gate.clear()
    b = Batcher(r.flush, in_flight=2)
    calls = []
    for i in range(5):
        calls.append(asyncio.ensure_future(b.submit(i)))
        await asyncio.sleep(0)
    assert r.batches == [[0], [1]]  # two flushes wait; the other three items wait for them
    r.gate.set()
    assert await asyncio.gather(*calls) == [0, 10, 20, 30, 40]
    assert sorted(i for batch in r.batches for i in batch) == [0, 1, 2, 3, 4]


async def test_an_items_error_is_its_callers_alone_and_a_failed_flush_is_every_callers():
    r = Recorder()
    b = Batcher(r.flush, in_flight=1)
    r.gate.clear()
    calls = [asyncio.ensure_future(b.submit(i)) for i in (1, -1, 2)]
    await asyncio.sleep(0)
    r.gate.set()
    answers = await asyncio.gather(*calls, return_exceptions=True)
    assert answers[0] == 10 and answers[2] == 20 and str(answers[1]) == "bad -1"

    async def broken(items: list[int]) -> list[int]:
        raise RuntimeError("down")

    failing = Batcher(broken)
    answers = await asyncio.gather(*(failing.submit(i) for i in range(3)), return_exceptions=True)
    assert [str(a) for a in answers] == ["down"] * 3

    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    with pytest.raises(RuntimeError, match="answered 0 of 1"):
        await Batcher(short).submit(1)


async def test_a_flush_cancelled_by_shutdown_answers_its_callers_unavailable():
    r = Recorder()
    r.gate.clear()
    b = Batcher(r.flush, in_flight=1)
    calls = [asyncio.ensure_future(b.submit(0))]
    await asyncio.sleep(0)  # [0] is being flushed
    calls.append(asyncio.ensure_future(b.submit(1)))
    await asyncio.sleep(0)  # [1] waits for the next flush
    for sender in list(b._senders):
        sender.cancel()
    answers = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(a, Unavailable) for a in answers) and r.batches == [[0]]

    r.batches.clear()  # a sender cancelled before it ever ran leaves nobody waiting either
    call = asyncio.ensure_future(b.submit(2))
    await asyncio.sleep(0)
    for sender in list(b._senders):
        sender.cancel()
    with pytest.raises(Unavailable):
        await call
    assert r.batches == []


def test_bounds_are_checked():
    with pytest.raises(ValueError):
        Batcher(Recorder().flush, in_flight=0)
