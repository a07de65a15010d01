"""The session calendar: the NYSE's regular hours, holidays and early closes, in New York time;
and the session close that expires DAY orders follows it."""
from __future__ import annotations

from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from meshkit import calendar

NY = ZoneInfo("America/New_York")


@pytest.fixture(autouse=True)
def regular_hours(monkeypatch):
    monkeypatch.delenv("STOCKMESH_MARKET_ALWAYS_OPEN", raising=False)


def at(y, m, d, hh, mm) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=NY)


def test_regular_hours_in_new_york_time_across_daylight_saving():
    assert not calendar.is_open(at(2026, 11, 23, 9, 29))
    assert calendar.is_open(at(2026, 11, 23, 9, 30))
    assert calendar.is_open(at(2026, 11, 23, 15, 59))
    assert not calendar.is_open(at(2026, 11, 23, 16, 0))
    # The same New York hours whatever the UTC offset: 14:30 UTC is 09:30 in winter, 10:30 in summer.
    assert calendar.is_open(datetime(2026, 1, 5, 14, 30, tzinfo=timezone.utc))
    assert not calendar.is_open(datetime(2026, 7, 6, 20, 30, tzinfo=timezone.utc))  # 16:30 EDT
    assert calendar.is_open(datetime(2026, 7, 6, 13, 30, tzinfo=timezone.utc))  # 09:30 EDT


@pytest.mark.parametrize("day, name", [
    (date(2026, 11, 26), "Thanksgiving"), (date(2026, 4, 3), "Good Friday"),
    (date(2026, 7, 3), "Independence Day"),  # July 4 is a Saturday: observed on the Friday
    (date(2027, 12, 24), "Christmas"),  # December 25 is a Saturday
    (date(2025, 1, 9), "Carter"),  # a special closure: the national day of mourning
])
def test_exchange_holidays_have_no_session(day, name):
    assert name in (calendar.holiday(day) or "")
    assert calendar.session(day) is None
    assert not calendar.is_open(datetime.combine(day, calendar.OPEN, NY).replace(hour=11))


@pytest.mark.parametrize("day", [date(2026, 11, 27), date(2026, 12, 24), date(2025, 7, 3), date(2024, 12, 24)])
def test_early_closes_at_one(day):
    assert calendar.session(day) == (calendar.OPEN, calendar.EARLY_CLOSE)
    assert calendar.is_open(at(day.year, day.month, day.day, 12, 59))
    assert not calendar.is_open(at(day.year, day.month, day.day, 13, 0))


def test_weekends_and_ordinary_days():
    assert calendar.session(date(2026, 11, 21)) is None  # a Saturday
    assert calendar.session(date(2026, 11, 24)) == (calendar.OPEN, calendar.CLOSE)
    assert calendar.session(date(2026, 12, 23)) == (calendar.OPEN, calendar.CLOSE)  # not an early close


def test_the_session_close_is_due_at_the_days_close_and_never_on_a_day_without_a_session(monkeypatch):
    assert calendar.closes_due(at(2026, 11, 24, 15, 59)) == date(2026, 11, 23)  # Monday's, made before
    assert calendar.closes_due(at(2026, 11, 24, 16, 0)) == date(2026, 11, 24)
    assert calendar.closes_due(at(2026, 11, 27, 12, 59)) == date(2026, 11, 25)  # Wednesday's: Thursday is a holiday
    assert calendar.closes_due(at(2026, 11, 27, 13, 0)) == date(2026, 11, 27)  # early close: DAY orders end at 13:00
    assert calendar.closes_due(at(2026, 11, 24, 23, 59)) == date(2026, 11, 24)
    monkeypatch.setenv("STOCKMESH_MARKET_ALWAYS_OPEN", "1")
    assert calendar.is_open(at(2026, 11, 26, 3, 0))
    assert calendar.closes_due(at(2026, 11, 24, 17, 0)) is None


def test_a_missed_close_is_due_until_the_next_close():
    # Nothing ran over the close: the last session's close is still due, over the night, a
    # holiday, a weekend and the next session, until that session's own close.
    assert calendar.closes_due(at(2026, 11, 25, 0, 1)) == date(2026, 11, 24)
    assert calendar.closes_due(at(2026, 11, 25, 9, 29)) == date(2026, 11, 24)
    assert calendar.closes_due(at(2026, 11, 25, 9, 30)) == date(2026, 11, 24)  # the next session is open
    assert calendar.closes_due(at(2026, 11, 25, 15, 59)) == date(2026, 11, 24)
    assert calendar.closes_due(at(2026, 11, 26, 17, 0)) == date(2026, 11, 25)  # Thanksgiving: Wednesday's
    assert calendar.closes_due(at(2026, 11, 28, 17, 0)) == date(2026, 11, 27)  # a Saturday: Friday's
    assert calendar.closes_due(at(2026, 11, 30, 9, 0)) == date(2026, 11, 27)  # Monday before the open
    assert calendar.closes_due(at(2026, 11, 30, 12, 0)) == date(2026, 11, 27)  # and during Monday's session


def test_a_closed_market_says_why():
    assert calendar.why_closed(at(2026, 11, 24, 10, 0)) is None
    assert calendar.why_closed(at(2026, 11, 21, 10, 0)) == "the market is closed on Saturdays"
    assert calendar.why_closed(at(2026, 11, 26, 10, 0)) == "the market is closed for Thanksgiving Day"
    assert calendar.why_closed(at(2026, 11, 24, 8, 0)) == (
        "the market is closed: today's session is 09:30-16:00 New York time")
    assert calendar.why_closed(at(2026, 11, 27, 14, 0)) == (
        "the market is closed: today's session is 09:30-13:00 New York time (an early close)")
