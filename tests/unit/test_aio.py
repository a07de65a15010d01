"""meshkit.aio: wait_set (an Event with a time limit, cancellable at any point), stopping
tasks whose cancellation was lost inside a library (cancel_and_wait, honour_cancellation), and
Finishing: work its caller's cancellation does not stop (order_svc's placements), a failure
nobody awaits any more logged, and shutdown's wait for what is left."""
from __future__ import annotations

import asyncio
import logging

import pytest

from meshkit.aio import FINISHED_WITHOUT_CALLER, Finishing, cancel_and_wait, honour_cancellation, wait_set
from meshkit.errors import Unavailable

log = logging.getLogger("test.finishing")


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


async def test_the_work_goes_on_when_its_caller_is_cancelled() -> None:
    finishing, started, go_on, done = Finishing(log, "job"), asyncio.Event(), asyncio.Event(), []

    async def job() -> str:
        started.set()
        await go_on.wait()
        done.append("done")
        return "done"

    caller = asyncio.create_task(finishing.run(job()))
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert len(finishing.tasks) == 1  # still running, without its caller
    assert await finishing.wait(0.01)  # not finished: left
    go_on.set()
    assert not await finishing.wait(5)
    assert done == ["done"] and not finishing.tasks


async def test_the_caller_gets_the_result_or_the_error() -> None:
    finishing = Finishing(log, "job")

    async def fails() -> None:
        raise ValueError("no")

    async def answers() -> int:
        return 42

    assert await finishing.run(answers()) == 42
    with pytest.raises(ValueError):
        await finishing.run(fails())
    assert not finishing.tasks


@pytest.mark.parametrize("failure, logged", [
    (RuntimeError("the ledger did not answer"), ("WARNING", "a job whose caller had gone failed", True)),
    (Unavailable("the account is busy", reason="ACCOUNT_BUSY"),  # an error answer: no traceback
     ("INFO", "a job whose caller had gone ended UNAVAILABLE ACCOUNT_BUSY: the account is busy", False))])
async def test_a_failure_whose_caller_had_gone_is_logged_and_counted(failure, logged, caplog) -> None:
    outcome = getattr(failure, "code", "INTERNAL")
    finishing, started, go_on = Finishing(log, "job"), asyncio.Event(), asyncio.Event()
    before = {o: FINISHED_WITHOUT_CALLER.labels("job", o)._value.get() for o in (outcome, "ok")}

    async def job() -> None:
        started.set()
        await go_on.wait()
        raise failure

    async def quick() -> int:
        return 1

    assert await finishing.run(quick()) == 1  # awaited by its caller: not counted
    caller = asyncio.create_task(finishing.run(job()))
    await started.wait()
    caller.cancel()
    await asyncio.gather(caller, return_exceptions=True)
    with caplog.at_level(logging.INFO, logger="test.finishing"):
        go_on.set()
        await finishing.wait(5)  # (the done callback, registered first, has run by then)
    assert [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records] == [logged]
    after = {o: FINISHED_WITHOUT_CALLER.labels("job", o)._value.get() for o in (outcome, "ok")}
    assert after == {outcome: before[outcome] + 1, "ok": before["ok"]}
