"""ledger_svc's end-of-day batch (runner.settlement_loop, MISSION F7): after a session's close
(plus SETTLE_AFTER_CLOSE) it settles and reconciles the day once, also when the ledger has no
fill of it to settle, retries a failed run, and does nothing on a market kept always open
(settled on demand)."""
from __future__ import annotations

import asyncio
from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from ledger_svc.domain.settlement import SettlementReport
from ledger_svc.service_layer import runner
from tests.support.wait import eventually

NEW_YORK = ZoneInfo("America/New_York")


class NothingDue:
    """A ledger with no unsettled fill (a unit of work whose settlement has nothing due)."""

    class settlement:
        @staticmethod
        async def due(through: date, limit: int) -> list:
            return []

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False


async def run_loop(monkeypatch, at: datetime, *, failures: int = 0, rounds: int = 6) -> list[date]:
    """Run `rounds` rounds of the loop at the frozen time `at`; returns the days settled."""
    settled: list[date] = []
    fails = [failures]

    async def settle(day, uow, js, namespace, **kw):
        if fails[0]:
            fails[0] -= 1
            raise ConnectionError("NATS went away")
        settled.append(day)
        return SettlementReport(trading_day=day, fills_settled=1)

    monkeypatch.setattr(runner, "settle_and_reconcile", settle)
    ticks = [0]

    def now() -> datetime:  # read once per round
        ticks[0] += 1
        return at

    task = asyncio.create_task(runner.settlement_loop(NothingDue, None, "ns", interval=0.001, now=now))
    assert await eventually(lambda: ticks[0] > rounds or task.done(), timeout=10)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return settled


def ny(*args) -> datetime:
    return datetime(*args, tzinfo=NEW_YORK).astimezone(timezone.utc)


async def test_the_day_is_settled_once_after_its_close(monkeypatch):
    monkeypatch.delenv("STOCKMESH_MARKET_ALWAYS_OPEN", raising=False)
    settled = await run_loop(monkeypatch, ny(2026, 11, 24, 16, 6))  # a Tuesday, after 16:00 + 5 min
    assert settled == [date(2026, 11, 24)]


@pytest.mark.parametrize("at, missed", [(ny(2026, 11, 28, 17, 0), date(2026, 11, 27)),  # a Saturday: Friday's (early close)
                                        (ny(2026, 11, 30, 11, 0), date(2026, 11, 27))])  # during Monday's session
async def test_a_day_missed_is_settled_when_ledger_svc_runs_again(monkeypatch, at, missed):
    monkeypatch.delenv("STOCKMESH_MARKET_ALWAYS_OPEN", raising=False)
    settled = await run_loop(monkeypatch, at)
    assert settled == [missed]


@pytest.mark.parametrize("at", [ny(2026, 11, 24, 16, 3),  # closed, but within SETTLE_AFTER_CLOSE
                                ny(2026, 11, 24, 11, 0)])  # the session is on
async def test_a_day_is_not_settled_before_its_close_is_due(monkeypatch, at):
    monkeypatch.delenv("STOCKMESH_MARKET_ALWAYS_OPEN", raising=False)
    settled = await run_loop(monkeypatch, at)
    assert settled == [date(2026, 11, 23)]  # the day before's is due (in a real run, settled before: nothing new)


async def test_a_day_the_ledger_has_nothing_to_settle_for_is_reconciled_too(monkeypatch):
    """The ledger's execution consumer may have applied nothing all day: only reconciling
    against the journal says so (FILL_NOT_APPLIED). The loop asked the ledger first and marked
    a day without unsettled fills done, unreconciled (round 14 review); here the ledger has
    nothing due (NothingDue)."""
    monkeypatch.delenv("STOCKMESH_MARKET_ALWAYS_OPEN", raising=False)
    settled = await run_loop(monkeypatch, ny(2026, 11, 24, 17, 0))
    assert settled == [date(2026, 11, 24)]


async def test_a_failed_run_is_retried(monkeypatch):
    monkeypatch.delenv("STOCKMESH_MARKET_ALWAYS_OPEN", raising=False)
    settled = await run_loop(monkeypatch, ny(2026, 11, 24, 17, 0), failures=2)
    assert settled == [date(2026, 11, 24)]


async def test_an_always_open_market_is_settled_on_demand_only(monkeypatch):
    monkeypatch.setenv("STOCKMESH_MARKET_ALWAYS_OPEN", "1")
    settled = await run_loop(monkeypatch, ny(2026, 11, 24, 17, 0))
    assert settled == []


async def test_unpark_goes_again_at_once_while_it_applies_something(monkeypatch):
    """Round 24: what parks behind the executions a round applies waits for the next round; it
    comes after `again`, not `every`, while rounds apply something."""
    from ledger_svc.service_layer import settlement

    rounds = iter([3, 1, 0, 0])
    slept: list[float] = []

    async def unpark(uow):
        return next(rounds)

    async def sleep(seconds):
        slept.append(seconds)
        if len(slept) == 4:
            raise asyncio.CancelledError

    monkeypatch.setattr(settlement, "unpark", unpark)
    monkeypatch.setattr(settlement.asyncio, "sleep", sleep)
    with pytest.raises(asyncio.CancelledError):
        await settlement.unpark_loop(None, every=1.0, again=0.05)
    assert slept == [0.05, 0.05, 1.0, 1.0]
