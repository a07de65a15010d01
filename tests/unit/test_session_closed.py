"""ledger_svc's view of order_svc's session closes (adapters.sessions.session_closed), which
`stockmesh settle` and RunSettlement ask before settling a day: in regular hours a day without
a session (a weekend, a holiday) that is over is closed without asking the database; a trading
day, a day without a session that is today, and on a market kept always open every day, is
asked."""
from __future__ import annotations

from datetime import date, timedelta

import pytest

from ledger_svc.adapters.sessions import session_closed


class Asked(Exception):
    pass


class RecordsOnly:
    """A pool that says when it is asked (the closes are order_svc's rows)."""

    def acquire(self, *args, **kwargs):
        raise Asked()


FRIDAY, SATURDAY, SUNDAY, MONDAY = date(2026, 11, 20), date(2026, 11, 21), date(2026, 11, 22), date(2026, 11, 23)
THANKSGIVING = date(2026, 11, 26)


@pytest.fixture
def regular_hours(monkeypatch) -> None:
    monkeypatch.delenv("STOCKMESH_MARKET_ALWAYS_OPEN", raising=False)


@pytest.mark.parametrize("day, today", [(SATURDAY, SUNDAY), (SUNDAY, MONDAY), (SATURDAY, MONDAY),
                                        (THANKSGIVING, THANKSGIVING + timedelta(days=1))])
async def test_a_day_without_a_session_that_is_over_is_closed_in_regular_hours(day: date, today: date,
                                                                               regular_hours) -> None:
    assert await session_closed(day, RecordsOnly(), today) is True


@pytest.mark.parametrize("day, today", [(FRIDAY, SATURDAY), (FRIDAY, MONDAY), (SATURDAY, SATURDAY),
                                        (THANKSGIVING, THANKSGIVING)])
async def test_a_trading_day_and_a_day_without_a_session_still_going_are_asked(day: date, today: date,
                                                                              regular_hours) -> None:
    with pytest.raises(Asked):
        await session_closed(day, RecordsOnly(), today)


@pytest.mark.parametrize("day, today", [(SATURDAY, MONDAY), (FRIDAY, MONDAY)])
async def test_every_day_is_asked_on_a_market_kept_always_open(day: date, today: date, monkeypatch) -> None:
    """A fill is dated by the day its order command was stored: an engine behind at midnight
    still makes fills of a day that is over."""
    monkeypatch.setenv("STOCKMESH_MARKET_ALWAYS_OPEN", "1")
    with pytest.raises(Asked):
        await session_closed(day, RecordsOnly(), today)
