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


def test_a_slow_collection_is_logged_as_the_services_not_the_current_requests():
    """The collector runs in whichever call is current: its warning carried that request's
    request_id and account_id (acceptance round 9: quote_svc's warnings named "alice"). And the
    time is ISO 8601 with its zone (it was "2026-12-06 04:34:21,826")."""
    import io
    import json
    from datetime import datetime

    from meshkit import logs

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs._Formatter("{asctime}{levelname}{name}{message}", style="{",
                                         rename_fields={"asctime": "time", "levelname": "level", "name": "logger"}))
    handler.addFilter(logs._ContextFilter("quote_svc"))
    logger = logging.getLogger("meshkit.server")
    logger.addHandler(handler)
    hook = watch_gc(slow=0.0)
    rid, acct = logs.request_id.set("req-1"), logs.account_id.set("alice")
    try:
        logger.warning("in the request")
        gc.collect()
    finally:
        logs.request_id.reset(rid)
        logs.account_id.reset(acct)
        gc.callbacks.remove(hook)
        logger.removeHandler(handler)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    request = next(r for r in records if r["message"] == "in the request")
    assert (request["request_id"], request["account_id"], request["service"]) == ("req-1", "alice", "quote_svc")
    slow = [r for r in records if r["message"] == "slow garbage collection"]
    assert slow and all("request_id" not in r and "account_id" not in r for r in slow), slow
    assert slow[0]["service"] == "quote_svc"
    at = datetime.fromisoformat(request["time"])
    assert at.utcoffset() is not None and "T" in request["time"]
