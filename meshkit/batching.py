"""Gathering the work of concurrent callers into batches, written once.

A call that is alone goes at once, in a batch of its own; under load the batches grow instead
of the calls multiplying: while `in_flight` batches are being flushed, what arrives waits and
goes together in the next one (up to `max_batch`). Used for the ledger's PlaceHolds calls and
for order_svc's saga statements (one statement, one transaction for many orders).
"""
from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable, Generic, Sequence, TypeVar

from prometheus_client import Histogram

from meshkit.errors import Unavailable

BATCH_SIZE = Histogram("stockmesh_batch_size", "Items per flush of a batcher (1: the call went alone)", ["batcher"],
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
# What a step costs a caller: the wait for the batch in flight, then its own flush.
BATCH_WAIT = Histogram("stockmesh_batch_wait_seconds", "From an item's submit to its answer", ["batcher"],
                       buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5))

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """`await submit(item)` returns the item's result from `flush(items)`, which is called with
    a batch and returns one result per item, in order; a result that is an exception is raised
    to that item's caller alone. If `flush` raises, every caller of the batch gets the error;
    if it is cancelled (shutting down), they get Unavailable. A caller that gives up (its
    deadline) leaves its item to the batch."""

    def __init__(self, flush: Callable[[list[T]], Awaitable[Sequence[R | BaseException]]], *,
                 in_flight: int = 2, max_batch: int = 200, name: str = "") -> None:
        if in_flight < 1 or max_batch < 1:
            raise ValueError("in_flight and max_batch must be at least 1")
        self.flush, self.in_flight, self.max_batch = flush, in_flight, max_batch
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._senders: set[asyncio.Task[None]] = set()
        self.batches = 0  # flushes made (for tests and benchmarks)
        label = name or getattr(flush, "__qualname__", "batcher")
        self._sizes, self._waits = BATCH_SIZE.labels(label), BATCH_WAIT.labels(label)

    async def submit(self, item: T) -> R:
        answer: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, answer))
        if len(self._senders) < self.in_flight:
            sender = asyncio.ensure_future(self._send())
            self._senders.add(sender)
            sender.add_done_callback(self._sender_done)
        submitted = time.perf_counter()
        try:
            return await answer
        finally:
            self._waits.observe(time.perf_counter() - submitted)

    def _sender_done(self, sender: asyncio.Task[None]) -> None:
        self._senders.discard(sender)
        if sender.cancelled() and not self._senders:  # shutting down: nobody will flush the rest
            waiting, self._waiting = self._waiting, []
            for _, answer in waiting:
                if not answer.done():
                    answer.set_exception(Unavailable("shutting down; retry"))

    async def _send(self) -> None:
        """Flush what is waiting, a batch at a time, until nothing is."""
        try:
            await self._send_all()
        finally:
            # At once, not in the task's done callback (which runs a loop turn later): a caller
            # woken by our last answer may submit before then, and must not find us still
            # counted as in flight, or its item would wait with nobody to flush it.
            self._senders.discard(asyncio.current_task())  # type: ignore[arg-type]

    async def _send_all(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:self.max_batch], self._waiting[self.max_batch:]
            self.batches += 1
            self._sizes.observe(len(batch))
            try:
                results = await self.flush([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"a flush answered {len(results)} of {len(batch)} items")
            except BaseException as exc:  # every caller of the batch hears of it
                error = exc if isinstance(exc, Exception) else Unavailable("shutting down; retry")
                for _, answer in batch:
                    if not answer.done():
                        answer.set_exception(error)
                if not isinstance(exc, Exception):
                    raise  # cancelled (shutting down)
                continue
            for (_, answer), result in zip(batch, results):
                if answer.done():
                    continue
                if isinstance(result, BaseException):
                    answer.set_exception(result)
                else:
                    answer.set_result(result)
