"""asyncio helpers written once.

`asyncio.wait_for` on Python 3.11 can swallow a cancellation that arrives just as the awaited
thing finishes or times out (CPython gh-86296, fixed in 3.12): a loop that waits with it can
then go on after being cancelled, and whoever cancelled it waits for ever (seen: a test's
teardown hung on the outbox relay). `asyncio.timeout` does not have that flaw.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Coroutine, TypeVar

from prometheus_client import Counter

from meshkit.errors import DomainError

T = TypeVar("T")
# Finishing's work whose caller went away, by how it ended (ok, a status code, cancelled).
FINISHED_WITHOUT_CALLER = Counter("stockmesh_finished_without_caller_total",
                                  "Work finished after its caller had gone (a client's deadline, a dropped connection)",
                                  ["work", "outcome"])


async def wait_set(event: asyncio.Event, timeout: float) -> bool:
    """Wait at most `timeout` seconds for `event`; True if it is set."""
    try:
        async with asyncio.timeout(max(0.0, timeout)):
            await event.wait()
        return True
    except TimeoutError:
        return event.is_set()


async def cancel_and_wait(tasks, timeout: float) -> set[asyncio.Task]:
    """Cancel `tasks` and wait for them to end, at most `timeout` seconds; returns those still
    running. A task that goes on after its cancellation (lost inside a library's own
    `asyncio.wait_for`, gh-86296 above: nats-py's requests use it) is cancelled again every
    half second, instead of being waited for until the timeout or for ever."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = {t for t in tasks if not t.done()}
    while pending:
        for t in pending:
            t.cancel()
        left = deadline - loop.time()
        if left <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=min(0.5, left))
    return pending


def honour_cancellation() -> None:
    """Raise CancelledError when this task has been asked to stop and the request was lost on
    the way (swallowed inside a library's `asyncio.wait_for`, gh-86296 above): call it at the
    top of a loop that runs until cancelled, so the loop ends at its next turn instead of never
    (and a TaskGroup waiting for it with it)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Finishing:
    """Work that its caller's cancellation does not stop: `run(coro)` awaits `coro` in a task of
    its own, shielded, so a caller that goes away (a client's deadline, a dropped connection:
    the server cancels the call) leaves it to finish; `wait(timeout)`, at shutdown, waits for
    what is still running. How work whose caller went away ended is counted
    (stockmesh_finished_without_caller_total{work=what}) and a failure of it logged to `log`
    (an error answer at INFO, anything else at WARNING with its traceback), not lost."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self.log, self.what = log, what
        self.tasks: set[asyncio.Task] = set()
        self._abandoned: set[asyncio.Task] = set()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():  # the caller went away; the work goes on
                self._abandoned.add(task)
            raise

    def _done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        abandoned = task in self._abandoned
        self._abandoned.discard(task)
        exc = None if task.cancelled() else task.exception()  # retrieved here: never "never retrieved"
        if not abandoned:
            return
        outcome = "cancelled" if task.cancelled() else "ok" if exc is None else getattr(exc, "code", "INTERNAL")
        FINISHED_WITHOUT_CALLER.labels(self.what, outcome).inc()
        if isinstance(exc, DomainError):  # an answer nobody reads (the ledger busy, say): no traceback
            self.log.info(f"a {self.what} whose caller had gone ended {exc.code} {exc.reason}: {exc.message}")
        elif exc is not None:
            self.log.warning(f"a {self.what} whose caller had gone failed", exc_info=exc)

    async def wait(self, timeout: float) -> set[asyncio.Task]:
        """Wait at most `timeout` seconds for the work still running; returns what is left."""
        if not self.tasks:
            return set()
        _, pending = await asyncio.wait(set(self.tasks), timeout=timeout)
        return pending
