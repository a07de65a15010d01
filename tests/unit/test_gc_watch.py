"""meshkit.server.watch_gc: every collection is timed, a slow one is logged."""
from __future__ import annotations

import gc
import logging

from meshkit.server import GC_PAUSE, watch_gc


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
