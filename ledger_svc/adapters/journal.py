"""Reading the execution journal (the EXECUTIONS stream) back, for reconciliation."""
from __future__ import annotations

import asyncio
from datetime import date, datetime, time, timezone

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from meshkit import bus, calendar
from stockmesh.matching.v1 import matching_pb2


async def fill_ids(js, namespace: str, day: date) -> set[str] | None:
    """The ids of every FILL traded on `day`, as the engine published them (None when the
    stream does not exist)."""
    stream = bus.stream_name(namespace, "EXECUTIONS")
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        return None
    last = info.state.last_seq
    ids: set[str] = set()
    if last == 0:
        return ids
    start = datetime.combine(day, time(0), tzinfo=calendar.NEW_YORK).astimezone(timezone.utc)
    sub = await js.pull_subscribe(bus.subject(namespace, "executions", ">"), stream=stream, config=ConsumerConfig(
        ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.BY_START_TIME,
        opt_start_time=start.isoformat().replace("+00:00", "Z")))
    try:
        while True:
            try:
                msgs = await sub.fetch(1000, timeout=1.0)
            except asyncio.TimeoutError:
                break
            done = False
            for m in msgs:
                ex = matching_pb2.Execution.FromString(m.data)
                when = ex.time.ToDatetime(tzinfo=timezone.utc)
                if ex.type == matching_pb2.EXECUTION_TYPE_FILL and calendar.trading_day(when) == day:
                    ids.add(ex.execution_id)
                done = m.metadata.sequence.stream >= last
            if done:
                break
    finally:
        await sub.unsubscribe()
    return ids
