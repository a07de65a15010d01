"""The trading session calendar: regular US hours (09:30-16:00 America/New_York, Monday to
Friday) by default; STOCKMESH_MARKET_ALWAYS_OPEN=1 keeps the simulated market always open."""
from __future__ import annotations

import os
from datetime import date, datetime, time, timezone
from zoneinfo import ZoneInfo

NEW_YORK = ZoneInfo("America/New_York")
OPEN, CLOSE = time(9, 30), time(16, 0)


def always_open() -> bool:
    return os.environ.get("STOCKMESH_MARKET_ALWAYS_OPEN", "").lower() in ("1", "true", "yes")


def is_open(at: datetime | None = None) -> bool:
    if always_open():
        return True
    local = (at or datetime.now(timezone.utc)).astimezone(NEW_YORK)
    return local.weekday() < 5 and OPEN <= local.time() < CLOSE


def trading_day(at: datetime) -> date:
    """The trading day a moment belongs to (its New York calendar date)."""
    return at.astimezone(NEW_YORK).date()
