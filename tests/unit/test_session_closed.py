"""ledger_svc's view of order_svc's session closes (adapters.sessions.session_closed), which
`stockmesh settle` and RunSettlement ask before settling a day: a day without a session (a
weekend, a holiday) that is over is closed without asking the database, in regular hours and
on a market kept always open alike; a trading day, and a day without a session that is today,
is asked."""
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


@pytest.fixture(params=["regular hours", "always open"])
def hours(request, monkeypatch) -> str:
    if request.param == "always open":
        monkeypatch.setenv("STOCKMESH_MARKET_ALWAYS_OPEN", "1")
    else:
        monkeypatch.delenv("STOCKMESH_MARKET_ALWAYS_OPEN", raising=False)
    return request.param


@pytest.mark.parametrize("day, today", [(SATURDAY, SUNDAY), (SUNDAY, MONDAY), (SATURDAY, MONDAY),
                                        (THANKSGIVING, THANKSGIVING + timedelta(days=1))])
async def test_a_day_without_a_session_that_is_over_is_closed(day: date, today: date, hours: str) -> None:
    assert await session_closed(day, RecordsOnly(), today) is True


@pytest.mark.parametrize("day, today", [(FRIDAY, SATURDAY), (FRIDAY, MONDAY), (SATURDAY, SATURDAY),
                                        (THANKSGIVING, THANKSGIVING)])
async def test_a_trading_day_and_a_day_without_a_session_still_going_are_asked(day: date, today: date,
                                                                              hours: str) -> None:
    with pytest.raises(Asked):
        await session_closed(day, RecordsOnly(), today)
