"""ledger_svc's view of order_svc's session closes (adapters.sessions.session_closed), which
`stockmesh settle` and RunSettlement ask before settling a day: in regular hours a day without
a session (a weekend, a holiday) is closed without asking the database; a trading day, and on
a market kept always open every day, is asked."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from ledger_svc.adapters.sessions import session_closed
from meshkit import calendar


class Asked(Exception):
    pass


class RecordsOnly:
    """A pool that says when it is asked (the closes are order_svc's rows)."""

    def acquire(self, *args, **kwargs):
        raise Asked()


SATURDAY, SUNDAY, THANKSGIVING = date(2030, 6, 1), date(2030, 6, 2), date(2030, 11, 28)


def lately(trading: bool) -> date:
    """A day of the last week (one that can have a close of it or of a later day in the
    closes kept: calendar.CLOSES_KEPT), a trading day or not."""
    today = calendar.trading_day(datetime.now(timezone.utc))
    return next(d for d in (today - timedelta(days=back) for back in range(1, 8))
                if (calendar.session(d) is not None) == trading)


@pytest.mark.parametrize("day", [SATURDAY, SUNDAY, THANKSGIVING])
async def test_a_day_without_a_session_is_closed_in_regular_hours(day: date, monkeypatch) -> None:
    monkeypatch.delenv("STOCKMESH_MARKET_ALWAYS_OPEN", raising=False)
    assert await session_closed(day, RecordsOnly()) is True


async def test_a_trading_day_is_asked(monkeypatch) -> None:
    monkeypatch.delenv("STOCKMESH_MARKET_ALWAYS_OPEN", raising=False)
    with pytest.raises(Asked):
        await session_closed(lately(trading=True), RecordsOnly())


@pytest.mark.parametrize("trading", [False, True])
async def test_every_day_is_asked_on_a_market_kept_always_open(trading: bool, monkeypatch) -> None:
    monkeypatch.setenv("STOCKMESH_MARKET_ALWAYS_OPEN", "1")
    with pytest.raises(Asked):
        await session_closed(lately(trading), RecordsOnly())
