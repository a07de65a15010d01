"""meshkit.server.watch_gc: every collection is timed, a slow one is logged; watch_loop_lag:
how long a ready callback waits for the event loop."""
from __future__ import annotations

import asyncio
import gc
import logging
import time

from meshkit.server import GC_PAUSE, LOOP_LAG, watch_gc, watch_loop_lag


def _count(generation: int) -> float:
    for metric in GC_PAUSE.collect():
        for s in metric.samples:
            if s.name.endswith("_count") and s.labels == {"generation": str(generation)}:
                return s.value
    return 0.0


def test_a_full_collection_is_timed_and_a_slow_one_logged(caplog):
    before = _count(2)
    hook = watch_gc(slow=0.0)  # every pause counts as slow
    try:
        with caplog.at_level(logging.WARNING, logger="meshkit.server"):
            gc.collect()
    finally:
        gc.callbacks.remove(hook)
    assert _count(2) == before + 1
    slow = [r for r in caplog.records if r.getMessage() == "slow garbage collection"]
    assert slow and slow[-1].generation == 2 and slow[-1].pauseMs >= 0


def _lag_counts() -> tuple[float, float]:
    """(observations so far, those longer than 10 ms)."""
    total = within = 0.0
    for metric in LOOP_LAG.collect():
        for s in metric.samples:
            if s.name.endswith("_count"):
                total = s.value
            elif s.name.endswith("_bucket") and s.labels["le"] == "0.01":
                within = s.value
    return total, total - within


async def test_loop_lag_counts_the_callbacks_ahead_of_a_ready_one():
    before, slow_before = _lag_counts()
    watcher = asyncio.create_task(watch_loop_lag(every=0.001))

    async def hog() -> None:  # takes the loop for 20 ms at each of its turns
        while True:
            time.sleep(0.02)
            await asyncio.sleep(0)

    hogging = asyncio.create_task(hog())
    deadline = time.monotonic() + 5.0
    while _lag_counts()[1] == slow_before and time.monotonic() < deadline:
        await asyncio.sleep(0.01)  # the hog and the probe run meanwhile
    hogging.cancel()
    watcher.cancel()
    await asyncio.gather(hogging, watcher, return_exceptions=True)
    total, slow = _lag_counts()
    assert total > before
    assert slow > slow_before  # a probe that waited behind the hog's turn was counted as such
