"""meshkit.aio.wait_set: an Event with a time limit, cancellable at any point."""
from __future__ import annotations

import asyncio

import pytest

from meshkit.aio import wait_set


async def test_true_when_set_false_when_the_time_is_up():
    event = asyncio.Event()
    assert await wait_set(event, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_set(event, 5) is True
    assert await wait_set(event, 0) is True  # already set


async def test_a_cancelled_waiter_stops_even_when_its_event_is_set_at_the_same_moment():
    # The case asyncio.wait_for on Python 3.11 can swallow: the awaited thing finishes in the
    # same loop iteration as the cancellation arrives (200 of 200 swallowed with wait_for on
    # 3.11 when this was written). The waiter must end cancelled.
    for _ in range(200):
        event = asyncio.Event()
        waiter = asyncio.create_task(wait_set(event, 5))
        await asyncio.sleep(0)
        event.set()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
