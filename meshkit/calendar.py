"""The trading session calendar: the NYSE's regular session by default (09:30-16:00
America/New_York, Monday to Friday, closed on the exchange's holidays, closing at 13:00 on its
early-close days); STOCKMESH_MARKET_ALWAYS_OPEN=1 keeps the simulated market always open.

The holidays, special closures included (e.g. a national day of mourning), come from the
`holidays` package's NYSE calendar. The early closes follow the exchange's standing rule: the
day after Thanksgiving, and July 3 and December 24 when they are trading days."""
from __future__ import annotations

import functools
import os
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import holidays

NEW_YORK = ZoneInfo("America/New_York")
OPEN, CLOSE, EARLY_CLOSE = time(9, 30), time(16, 0), time(13, 0)


def always_open() -> bool:
    return os.environ.get("STOCKMESH_MARKET_ALWAYS_OPEN", "").lower() in ("1", "true", "yes")


@functools.cache
def _nyse() -> holidays.HolidayBase:
    return holidays.financial_holidays("NYSE")  # fills in each year as it is asked about


def holiday(day: date) -> str | None:
    """The name of the exchange holiday on `day`, if it is one."""
    return _nyse().get(day)


def _early_close(day: date) -> bool:
    thanksgiving = date(day.year, 11, 1) + timedelta(days=(3 - date(day.year, 11, 1).weekday()) % 7 + 21)
    return day in (thanksgiving + timedelta(days=1), date(day.year, 7, 3), date(day.year, 12, 24))


def session(day: date) -> tuple[time, time] | None:
    """The regular session of `day` (New York time: open, close), or None when the exchange does
    not trade that day (a weekend or a holiday)."""
    if day.weekday() >= 5 or holiday(day) is not None:
        return None
    return OPEN, EARLY_CLOSE if _early_close(day) else CLOSE


def is_open(at: datetime | None = None) -> bool:
    return why_closed(at) is None


def why_closed(at: datetime | None = None) -> str | None:
    """None while the market is open; else why not, for a customer (e.g. 'the market is closed
    for Thanksgiving Day')."""
    if always_open():
        return None
    local = (at or datetime.now(timezone.utc)).astimezone(NEW_YORK)
    day = local.date()
    if day.weekday() >= 5:
        return f"the market is closed on {day:%A}s"
    if (name := holiday(day)) is not None:
        return f"the market is closed for {name}"
    hours = session(day)
    assert hours is not None  # a weekday that is no holiday has a session
    opens, closes = hours
    if opens <= local.time() < closes:
        return None
    early = " (an early close)" if closes != CLOSE else ""
    return f"the market is closed: today's session is {opens:%H:%M}-{closes:%H:%M} New York time{early}"


def trading_day(at: datetime) -> date:
    """The trading day a moment belongs to (its New York calendar date)."""
    return at.astimezone(NEW_YORK).date()


def closes_due(at: datetime) -> date | None:
    """The trading day whose close is due at `at`: the last session whose close (New York
    time 16:00, or 13:00 on an early-close day) has passed. So a close missed while nothing
    ran (a process down over the close, over a night, a weekend or into the next session) is
    still made: the engines' close of a day expires the DAY orders of that day and earlier ones
    only, never those of a session opened since. None on a market kept always open."""
    if always_open():
        return None
    local = at.astimezone(NEW_YORK)
    for back in range(LOOK_BACK_DAYS):
        day = local.date() - timedelta(days=back)
        if (hours := session(day)) is None:
            continue
        if back == 0 and local.time() < hours[1]:
            continue  # today's session has not closed: the last close was on an earlier day
        return day
    return None


# Longer than any run of days without a session (weekends and holidays; the exchange's longest
# closures, e.g. after September 11, 2001, were four trading days).
LOOK_BACK_DAYS = 15
# How long the record that a session was closed must be kept: closes_due may ask for a close
# that old again.
CLOSES_KEPT = timedelta(days=LOOK_BACK_DAYS + 1)


def after_today(day: date) -> str | None:
    """Why an operator may not act on `day` yet (settle it, close its session): it has not
    come in New York. None for today and earlier days."""
    today = trading_day(datetime.now(timezone.utc))
    return f"{day} has not come yet (today is {today} in New York)" if day > today else None
