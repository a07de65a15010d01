"""The end of a trading session: DAY orders expire at the close.

After the close of a trading day (meshkit.calendar: 16:00 America/New_York, 13:00 on an
early-close day), order_svc writes one
`EngineCommand.session_close` per listed symbol to the outbox, in one transaction, with
msg_id = command_id = `close:<day>:<SYMBOL>`. orders.outbox.msg_id is UNIQUE and inserts are
ON CONFLICT DO NOTHING, so every replica and every retry writes each close once; the relay
hands it to the symbol's engine in order with the symbol's other commands, and the engine drops
a repeat by its command id. The engine expires resting DAY orders (EXPIRED executions):
order_svc marks them EXPIRED and the ledger releases their holds. The engine expires only the
DAY orders of the closed day and earlier days (each DAY order's trading day is the New York date
of its acceptance), so a close made late, during the next session, ends the day it closes.

With STOCKMESH_MARKET_ALWAYS_OPEN set the market never closes by itself: `stockmesh session
close [--date D]` does the same on demand.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import date, datetime, timedelta, timezone
from typing import Callable

from meshkit import bus, calendar
from meshkit.prototime import set_time
from meshkit.symbols import listed
from order_svc.service_layer.unit_of_work import OrderUnitOfWork
from stockmesh.matching.v1 import matching_pb2

log = logging.getLogger("order_svc.session")


async def other_namespace(uow: Callable[[], OrderUnitOfWork], namespace: str) -> str | None:
    """The namespace this database's order flow goes to (its latest outbox row's), when it is
    not `namespace`: a session close queued for `namespace` would never reach an engine."""
    async with uow() as u:
        found = await u.orders.outbox_namespace()
    return found if found not in (None, namespace) else None


def close_msg_id(day: date, symbol: str) -> str:
    return f"close:{day.isoformat()}:{symbol}"


async def closed_after(day: date, uow: Callable[[], OrderUnitOfWork], today: date) -> date | None:
    """The latest day after `day`, up to `today`, whose session close was queued (within the
    days the outbox keeps closes, calendar.CLOSES_KEPT), or None. A close of `day` then ends
    nothing more: the engine's close of that later day ended the DAY orders of `day` too."""
    days = [today - timedelta(days=back) for back in range(calendar.CLOSES_KEPT.days)]
    ids = [close_msg_id(d, symbol) for d in days if d > day for symbol in sorted(listed())]
    if not ids:
        return None
    async with uow() as u:
        found = await u.orders.queued(ids)
    return max((date.fromisoformat(m.split(":")[1]) for m in found), default=None)


async def close_made(day: date, uow: Callable[[], OrderUnitOfWork], today: date) -> bool:
    """Whether the session of `day` has closed: its close, or a later day's up to `today`
    (which ended the DAY orders of `day` too, and came after its trading), was queued; a day
    older than the closes the outbox keeps (calendar.CLOSES_KEPT) closed long ago."""
    if (today - day).days >= calendar.CLOSES_KEPT.days:
        return True
    return await closed_after(day - timedelta(days=1), uow, today) is not None


async def close_session(day: date, uow: Callable[[], OrderUnitOfWork], namespace: str,
                        symbols: list[str] | None = None) -> int:
    """Queue the session close of `day` for every listed symbol; returns how many were new
    (0 when this day was closed before). A close of `day` queued for another namespace and not
    published (the relay publishes only its own namespace's rows) is moved to this one."""
    new = 0
    close = matching_pb2.SessionClose(trading_day=day.isoformat())
    # On the clock that stamps the orders' accepted_at (not NATS's): which DAY orders of the day
    # were accepted before the close is decided on one clock (round 17).
    set_time(close.queued_at, datetime.now(timezone.utc))
    async with uow() as u:
        for symbol in symbols or sorted(listed()):
            cmd = matching_pb2.EngineCommand(command_id=close_msg_id(day, symbol), symbol=symbol, session_close=close)
            subject = bus.subject(namespace, "orders", symbol)
            await u.orders.take_over_outbox(subject, cmd.command_id)  # queued by hand for another namespace
            new += await u.orders.add_outbox(subject, cmd.command_id, cmd.SerializeToString())
        await u.commit()
    return new


async def session_close_loop(uow: Callable[[], OrderUnitOfWork], namespace: str, wake_relay: Callable[[], None],
                             interval: float = 30.0,
                             now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
    """Every `interval` seconds: once the day's close is due, queue it (a no-op once done). A
    close missed while no replica ran is made when one starts (meshkit.calendar.closes_due),
    also during the next session: the engine expires the DAY orders of the closed day and
    earlier ones, not those of the session open since."""
    while True:
        at = now()
        day = calendar.closes_due(at)
        if day is not None:
            try:
                n = await close_session(day, uow, namespace)
                if n:
                    late = day < calendar.trading_day(at)
                    (log.warning if late else log.info)(
                        "missed session close made now" if late else "session closed",
                        extra={"tradingDay": day.isoformat(), "symbols": n})
                    wake_relay()
            except Exception:  # noqa: BLE001 - the next round retries
                log.exception("session close failed; retrying")
        await asyncio.sleep(interval)
