"""meshkit.aio: wait_set (an Event with a time limit, cancellable at any point), and stopping
tasks whose cancellation was lost inside a library (cancel_and_wait, honour_cancellation)."""
from __future__ import annotations

import asyncio

import pytest

from meshkit.aio import cancel_and_wait, honour_cancellation, wait_set


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


async def _loses_its_first_cancellation(turns: list[int], honour: bool) -> None:
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        pass  # lost, as asyncio.wait_for on 3.11 can lose it inside a library (gh-86296)
    while True:
        if honour:
            honour_cancellation()
        turns[0] += 1
        await asyncio.Event().wait()  # a loop that waits for what never comes


async def test_a_loop_that_honours_a_lost_cancellation_ends_at_its_next_turn():
    turns = [0]
    task = asyncio.create_task(_loses_its_first_cancellation(turns, honour=True))
    await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=5)
    assert done == {task} and task.cancelled() and turns == [0]


async def test_cancel_and_wait_cancels_again_what_lost_its_cancellation():
    turns = [0]
    task = asyncio.create_task(_loses_its_first_cancellation(turns, honour=False))
    await asyncio.sleep(0)
    assert await cancel_and_wait([task], 5) == set()
    assert task.cancelled() and turns == [1]  # one turn of its loop, then the second cancellation
    stuck = asyncio.create_task(asyncio.Event().wait())
    assert await cancel_and_wait([stuck], 5) == set() and stuck.cancelled()
