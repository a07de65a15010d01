"""`stockmesh settle`'s progress says how many fills of how many it has settled (round 19: each
batch's count alone, "settled 500 fills" again and again, with no total). A ledger of fakes:
its unsettled proceeds, settled in batches."""
from __future__ import annotations

from datetime import date
from decimal import Decimal

import asyncpg

from ledger_svc.service_layer import settlement

DAY = date(2026, 11, 24)


class Ledger:
    """Unsettled proceeds (fill id, account, amount); `late` more come due after the first batch,
    as the fills of a day still trading do (--before-close)."""

    def __init__(self, due: int, late: int = 0) -> None:
        self.due = [{"fill_id": f"AAPL:1:{i}", "account_id": "s", "amount": Decimal("1.00")} for i in range(due)]
        self.late, self.batches, self.failing = late, 0, set()
        ledger = self

        class Settlement:
            @staticmethod
            async def count_due(through: date) -> int:
                return len(ledger.due)

            @staticmethod
            async def due(through: date, limit: int, *, passed=(), only=None, lock: bool = True) -> list:
                if lock:
                    ledger.batches += 1
                if ledger.batches == 2:
                    ledger.due += [{"fill_id": f"AAPL:2:{i}", "account_id": "s", "amount": Decimal("1.00")}
                                   for i in range(ledger.late)]
                    ledger.late = 0
                return [r for r in ledger.due if r["fill_id"] not in passed and (only is None or r["fill_id"] in only)
                        ][:limit]

            @staticmethod
            async def count_settled(through: date) -> int:
                return 0

        class Books:
            @staticmethod
            async def lock_accounts(accounts) -> None:
                list(accounts)

        self.settlement, self.ledger = Settlement, Books

    def __call__(self) -> Ledger:  # a unit of work on it
        return self

    async def __aenter__(self) -> Ledger:
        return self

    async def __aexit__(self, *exc) -> bool:
        return False

    async def commit(self) -> None:
        pass


async def _settled(day, uow_factory, batch, passed, *, only=None, lock_wait=None) -> list:
    """settlement._settle_batch on the fakes: the rows due, settled, unless one is a fill of
    `Ledger.failing`, which fails the batch (as a balance past the largest would)."""
    async with uow_factory() as uow:
        rows = await uow.settlement.due(day, batch, passed=passed, only=only)
        if any(r["fill_id"] in uow.failing for r in rows):
            raise settlement._BatchFailed(rows) from asyncpg.NumericValueOutOfRangeError("numeric field overflow")
        uow.due = [r for r in uow.due if r not in rows]
        return rows


async def test_settle_says_how_many_of_how_many(monkeypatch):
    monkeypatch.setattr(settlement, "_settle_batch", _settled)
    said: list[str] = []
    report = await settlement.settle(DAY, Ledger(due=5), batch=2, progress=said.append)
    assert said == ["settled 2 of 5 fills", "settled 4 of 5 fills", "settled 5 of 5 fills"]
    assert report.fills_settled == 5 and report.amount_settled == Decimal("5.00")


async def test_fills_come_due_while_settling_raise_the_total(monkeypatch):
    monkeypatch.setattr(settlement, "_settle_batch", _settled)
    said: list[str] = []
    await settlement.settle(DAY, Ledger(due=3, late=3), batch=2, progress=said.append)
    assert said == ["settled 2 of 3 fills", "settled 4 of 6 fills", "settled 6 of 6 fills"]  # counted again


async def test_without_progress_nothing_is_counted(monkeypatch):
    """The service's own batch (settlement_loop) hears no progress: no count to pay for."""
    monkeypatch.setattr(settlement, "_settle_batch", _settled)
    ledger = Ledger(due=3)

    async def refused(through: date) -> int:
        raise AssertionError("counted")
    ledger.settlement.count_due = staticmethod(refused)
    report = await settlement.settle(DAY, ledger, batch=2)
    assert report.fills_settled == 3


async def test_a_fill_that_fails_alone_is_passed_by_and_the_rest_settle(monkeypatch):
    """A batch that fails is settled again one fill at a time: the fill that fails alone is
    said, reported (SETTLE_FAILED) and passed by in later batches; the others settle."""
    monkeypatch.setattr(settlement, "_settle_batch", _settled)
    ledger = Ledger(due=5)
    ledger.failing = {"AAPL:1:1"}
    said: list[str] = []
    report = await settlement.settle(DAY, ledger, batch=2, progress=said.append)
    assert report.fills_settled == 4 and report.amount_settled == Decimal("4.00")
    assert [(d.kind, d.reference) for d in report.discrepancies] == [("SETTLE_FAILED", "AAPL:1:1")]
    assert said[0].startswith("could not settle fill AAPL:1:1 (s 1.00): the seller's cash would pass ")
    assert said[1:] == ["settled 1 of 5 fills", "settled 3 of 5 fills", "settled 4 of 5 fills"]


async def test_a_batch_meeting_a_held_account_lets_go_and_tries_again_then_waits(monkeypatch):
    """A batch waits SETTLE_LOCK_WAIT at most for its sellers' accounts, lets every one go and
    tries again; after SETTLE_LOCK_TRIES refusals in a row it waits as long as it takes."""
    waits: list[float | None] = []

    async def held(day, uow_factory, batch, passed, *, only=None, lock_wait=None) -> list:
        waits.append(lock_wait)
        if lock_wait is not None:
            raise asyncpg.LockNotAvailableError("canceling statement due to lock timeout")
        return await _settled(day, uow_factory, batch, passed, only=only)

    async def no_pause(seconds: float) -> None:
        pass

    monkeypatch.setattr(settlement, "_settle_batch", held)
    monkeypatch.setattr(settlement.asyncio, "sleep", no_pause)
    report = await settlement.settle(DAY, Ledger(due=3), batch=5)
    assert report.fills_settled == 3
    assert waits == [settlement.SETTLE_LOCK_WAIT] * settlement.SETTLE_LOCK_TRIES + [None]


async def test_a_passed_fill_counts_once_in_a_total_counted_again(monkeypatch):
    """Review: a total counted again (fills come due meanwhile) counted a passed fill twice
    (it is still due): "settled 5 of 7" for 6 fills."""
    monkeypatch.setattr(settlement, "_settle_batch", _settled)
    ledger = Ledger(due=3, late=3)
    ledger.failing = {"AAPL:1:0"}
    said: list[str] = []
    report = await settlement.settle(DAY, ledger, batch=2, progress=said.append)
    assert report.fills_settled == 5
    assert said[-1] == "settled 5 of 6 fills", said
