"""The execution journal (the EXECUTIONS stream) read back, for reconciliation, and trimmed."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone
from decimal import Decimal
from typing import Callable

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from meshkit import bus, calendar
from stockmesh.matching.v1 import matching_pb2

log = logging.getLogger("ledger_svc.journal")


# A fill as the journal has it: its price and quantity.
Terms = tuple[Decimal | None, int]


async def fills(js, namespace: str, day: date, *, attempts: int = 3) -> dict[str, Terms] | None:
    """Every FILL traded on `day` as the engine published it, by id: its price and quantity
    (None when the stream does not exist). Read again from the start when JetStream does not answer for a
    moment (a clustered stream electing a new leader after a server died: the fresh-clone run
    saw `settle` end in ServiceUnavailableError there), up to `attempts` times."""
    for attempt in range(1, attempts + 1):
        try:
            return await _fills(js, namespace, day)
        except Exception as exc:  # noqa: BLE001 - re-raised unless JetStream did not answer
            if attempt == attempts or not bus.unreachable(exc):
                raise
            log.warning("reading the execution journal failed; reading it again",
                        extra={"error": repr(exc), "attempt": attempt})
            await asyncio.sleep(attempt)
    raise AssertionError("unreachable")


async def _fills(js, namespace: str, day: date) -> dict[str, Terms] | None:
    stream = bus.stream_name(namespace, "EXECUTIONS")
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        return None
    last = info.state.last_seq
    found: dict[str, Terms] = {}
    if last == 0:
        return found
    start = datetime.combine(day, time(0), tzinfo=calendar.NEW_YORK).astimezone(timezone.utc)
    sub = await js.pull_subscribe(bus.subject(namespace, "executions", ">"), stream=stream, config=ConsumerConfig(
        ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.BY_START_TIME,
        opt_start_time=start.isoformat().replace("+00:00", "Z")))
    try:
        async for msgs in _batches(sub):
            done = False
            for m in msgs:
                ex = matching_pb2.Execution.FromString(m.data)
                when = ex.time.ToDatetime(tzinfo=timezone.utc)
                if ex.type == matching_pb2.EXECUTION_TYPE_FILL and calendar.trading_day(when) == day:
                    found[ex.execution_id] = (Decimal(ex.price) if ex.price else None, ex.quantity)
                done = m.metadata.sequence.stream >= last
            if done:
                break
    finally:
        await sub.unsubscribe()
    return found


# A fetch that brings nothing within FETCH_TIMEOUT ends a read only when the consumer has
# nothing left to deliver; otherwise JetStream is slow (a busy disk, a leader election) and
# the read goes on, up to PATIENCE such fetches in a row, then fails (bus.Stalled:
# NATS not answering). Taking a slow answer for the end had two costs: reconciliation called
# the fills not read yet FILL_NOT_IN_JOURNAL, and a trim took the rest of the stream for
# earlier days and purged executions of days not settled yet.
FETCH_TIMEOUT = 1.0
PATIENCE = 10


async def _batches(sub):
    """The batches a pull subscription delivers, until its consumer has nothing pending."""
    waited = 0
    while True:
        try:
            msgs = await sub.fetch(1000, timeout=FETCH_TIMEOUT)
        except asyncio.TimeoutError:  # nats.errors.TimeoutError is one too
            info = await bus.answered(sub.consumer_info())
            if not info.num_pending:
                return
            waited += 1
            if waited >= PATIENCE:
                raise bus.Stalled(
                    f"the execution journal delivered nothing for {waited} fetches of {FETCH_TIMEOUT:g} s "
                    f"with {info.num_pending} executions still pending: try again when JetStream answers")
            log.warning("the execution journal is slow to deliver; still reading",
                        extra={"pending": info.num_pending, "waited": waited})
            continue
        waited = 0
        yield msgs


@dataclass
class Extent:
    """What the stream holds: messages first_seq..last_seq (none when first_seq > last_seq),
    per subject how many, and each durable consumer's state."""
    stream: str
    first_seq: int
    last_seq: int
    messages: int
    bytes: int
    subjects: dict[str, int] = field(default_factory=dict)
    consumers: list = field(default_factory=list)  # ConsumerInfo


async def extent(js, namespace: str) -> Extent | None:
    """The EXECUTIONS stream's extent (None when it does not exist)."""
    stream = bus.stream_name(namespace, "EXECUTIONS")
    try:
        info = await js.stream_info(stream, subjects_filter=">")
    except NotFoundError:
        return None
    st = info.state
    return Extent(stream, st.first_seq, st.last_seq, st.messages, st.bytes, dict(st.subjects or {}),
                  await bus.consumers(js, stream))


async def first_seq_of(js, namespace: str, day: date, first_seq: int, stop: int,
                       progress: Callable[[int], None] | None = None) -> int:
    """Reading the stream in order from `first_seq`: the sequence of the first execution
    traded on `day` or later, or `stop` if none is below it. Everything below the answer is an
    execution of an earlier trading day (a later one read first ends the search there, so one
    published out of order is kept). `progress` is told how many were read, every 10,000."""
    if first_seq >= stop:
        return stop
    stream = bus.stream_name(namespace, "EXECUTIONS")
    sub = await js.pull_subscribe(bus.subject(namespace, "executions", ">"), stream=stream, config=ConsumerConfig(
        ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=first_seq))
    read = 0
    try:
        async for msgs in _batches(sub):
            for m in msgs:
                seq = m.metadata.sequence.stream
                if seq >= stop:
                    return stop
                when = matching_pb2.Execution.FromString(m.data).time.ToDatetime(tzinfo=timezone.utc)
                if calendar.trading_day(when) >= day:
                    return seq
                if seq + 1 >= stop:
                    return stop
                read += 1
                if progress and read % 10_000 == 0:
                    progress(read)
        return stop  # nothing more: the stream ends below `stop`
    finally:
        await sub.unsubscribe()


async def purge_below(js, namespace: str, seq: int) -> None:
    """Delete the stream's messages with a sequence below `seq`."""
    await js.purge_stream(bus.stream_name(namespace, "EXECUTIONS"), seq=seq)
