"""order_svc's session closes, as the ledger sees them: whether a trading day's session has
closed, read from order_svc's own records (its outbox's close commands) in the database every
deployment gives the services (one DATABASE_URL), with order_svc's own query, never a copy of it.
The one place ledger_svc reads order_svc's tables; settlement asks it before settling a day."""
from __future__ import annotations

from datetime import date, datetime, timezone

from meshkit import calendar
from order_svc.service_layer.session import close_made
from order_svc.service_layer.unit_of_work import OrderUnitOfWork


async def session_closed(day: date, pool, today: date | None = None) -> bool:
    """Whether a close of `day`, or of a later day up to `today` (in New York), was made. In
    regular hours a day the exchange does not trade (a weekend, a holiday) that is over counts
    as closed without one: it has no session to close and nothing traded (review, round 23: a
    scheduler settling "yesterday" every morning was refused each Sunday and Monday, told to
    close a session that never was). On a market kept always open every day needs its close:
    a fill is dated by the day its order command was stored, so an engine behind at midnight
    still makes fills of a day that is over (review, round 23)."""
    today = today or calendar.trading_day(datetime.now(timezone.utc))
    if not calendar.always_open() and calendar.session(day) is None and day < today:
        return True
    return await close_made(day, lambda: OrderUnitOfWork(pool), today)
