"""order_svc's session loop: the close of the last session is queued once it is due, also
when it was missed (order_svc down over the close: started the next morning, the weekend after
or during the next session, it closes that day, logged at WARNING)."""
from __future__ import annotations

import asyncio
import logging
from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from meshkit import calendar
from order_svc.service_layer import session
from tests.support.wait import eventually

NEW_YORK = ZoneInfo("America/New_York")


def ny(*args) -> datetime:
    return datetime(*args, tzinfo=NEW_YORK).astimezone(timezone.utc)


async def run_loop(monkeypatch, at: datetime, rounds: int = 4) -> tuple[list[date], int]:
    """Run `rounds` rounds at the frozen time `at`: (days asked to close, relay wake-ups)."""
    monkeypatch.delenv("STOCKMESH_MARKET_ALWAYS_OPEN", raising=False)
    asked: list[date] = []
    ticks, wakes = [0], [0]

    async def close(day, uow, namespace, symbols=None):
        asked.append(day)
        return 12 if len(asked) == 1 else 0  # queued once; then nothing new

    def now() -> datetime:
        ticks[0] += 1
        return at

    monkeypatch.setattr(session, "close_session", close)
    task = asyncio.create_task(session.session_close_loop(None, "ns", lambda: wakes.__setitem__(0, wakes[0] + 1),
                                                          interval=0.001, now=now))
    assert await eventually(lambda: ticks[0] > rounds or task.done(), timeout=10)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return asked, wakes[0]


async def test_the_close_is_queued_after_the_close_of_the_day(monkeypatch, caplog):
    with caplog.at_level(logging.INFO, logger="order_svc.session"):
        asked, wakes = await run_loop(monkeypatch, ny(2026, 11, 24, 16, 0, 30))
    assert set(asked) == {date(2026, 11, 24)} and wakes == 1
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("INFO", "session closed")]


@pytest.mark.parametrize("at, missed", [(ny(2026, 11, 25, 8, 0), date(2026, 11, 24)),  # the next morning
                                        (ny(2026, 11, 28, 12, 0), date(2026, 11, 27)),  # a Saturday
                                        (ny(2026, 11, 30, 9, 29), date(2026, 11, 27)),  # Monday before the open
                                        (ny(2026, 11, 30, 9, 30), date(2026, 11, 27))])  # and once it is open
async def test_a_missed_close_is_made_when_order_svc_starts(monkeypatch, caplog, at, missed):
    with caplog.at_level(logging.INFO, logger="order_svc.session"):
        asked, wakes = await run_loop(monkeypatch, at)
    assert set(asked) == {missed} and wakes == 1
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("WARNING", "missed session close made now")]


async def test_before_the_first_close_in_reach_nothing_is_made(monkeypatch):
    monkeypatch.setattr(calendar, "LOOK_BACK_DAYS", 1)  # today only: its session has not closed
    asked, wakes = await run_loop(monkeypatch, ny(2026, 11, 25, 12, 0))
    assert asked == [] and wakes == 0
