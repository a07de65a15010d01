"""The execution journal read back for reconciliation (ledger_svc.adapters.journal.fills)
is read again when JetStream does not answer for a moment: a clustered stream electing a new
leader after one of its servers died answered a fetch with ServiceUnavailableError, and
`stockmesh settle` ended in a traceback (a fresh-clone run of tests/e2e/test_nats_cluster.py).

A fetch that brings nothing is the end of the journal only when the consumer has nothing
pending: both readers (the day's fills for reconciliation, the first execution of a day for
a trim) took a slow fetch for the end; reconciliation then called the unread fills
FILL_NOT_IN_JOURNAL, and a trim purged the executions of days not settled yet."""
from __future__ import annotations

from datetime import date, datetime, timezone
from decimal import Decimal
from types import SimpleNamespace

import nats.errors
import nats.js.errors
import pytest

from ledger_svc.adapters import journal
from stockmesh.matching.v1 import matching_pb2

DAY = date(2026, 12, 4)


def fill(n: int, day: date = DAY) -> SimpleNamespace:
    ex = matching_pb2.Execution(execution_id=f"AAPL:{n}:0", symbol="AAPL", type=matching_pb2.EXECUTION_TYPE_FILL,
                                price=f"187.{n}5", quantity=n)
    ex.time.FromDatetime(datetime(day.year, day.month, day.day, 15, tzinfo=timezone.utc))
    return SimpleNamespace(data=ex.SerializeToString(), metadata=SimpleNamespace(sequence=SimpleNamespace(stream=n)))


class Journal:
    """Two fills; the first fetch of the first `failures` reads fails as a leaderless stream does."""

    def __init__(self, failures: int) -> None:
        self.failures, self.reads = failures, 0

    async def stream_info(self, stream):
        return SimpleNamespace(state=SimpleNamespace(last_seq=2))

    async def pull_subscribe(self, subject, stream, config):
        self.reads += 1
        failing = self.reads <= self.failures

        class Sub:
            async def fetch(self, batch, timeout):
                if failing:
                    raise nats.js.errors.ServiceUnavailableError()
                return [fill(1), fill(2)]

            async def unsubscribe(self):
                pass

            async def consumer_info(self):
                return SimpleNamespace(num_pending=0)
        return Sub()


class SlowJournal:
    """`messages` delivered one per fetch, with `slow` empty fetches (a JetStream slow to
    deliver: the consumer still has messages pending) before each of them."""

    def __init__(self, messages: list, slow: int) -> None:
        self.messages, self.slow = messages, slow

    async def stream_info(self, stream):
        return SimpleNamespace(state=SimpleNamespace(last_seq=len(self.messages)))

    async def pull_subscribe(self, subject, stream, config):
        journal = self

        class Sub:
            delivered, empty = 0, 0

            async def fetch(self, batch, timeout):
                if self.delivered == len(journal.messages) or self.empty < journal.slow:
                    self.empty += 1
                    raise nats.errors.TimeoutError
                self.empty = 0
                self.delivered += 1
                return [journal.messages[self.delivered - 1]]

            async def consumer_info(self):
                return SimpleNamespace(num_pending=len(journal.messages) - self.delivered)

            async def unsubscribe(self):
                pass
        return Sub()


async def test_a_moment_without_an_answer_is_read_again(monkeypatch):
    monkeypatch.setattr(journal.asyncio, "sleep", lambda _s: _no_wait())
    js = Journal(failures=2)
    assert await journal.fills(js, "ns", DAY) == {"AAPL:1:0": (Decimal("187.15"), 1),
                                                  "AAPL:2:0": (Decimal("187.25"), 2)} and js.reads == 3
    with pytest.raises(nats.js.errors.ServiceUnavailableError):
        await journal.fills(Journal(failures=3), "ns", DAY)  # still none after three: said so


async def _no_wait() -> None:
    return None


async def test_a_slow_fetch_is_not_the_end_of_the_days_fills():
    js = SlowJournal([fill(1), fill(2), fill(3)], slow=2)
    assert set(await journal.fills(js, "ns", DAY)) == {"AAPL:1:0", "AAPL:2:0", "AAPL:3:0"}


async def test_a_slow_fetch_is_not_the_end_of_the_days_before_a_trim():
    """Sequences 1-2 traded the day before, 3 on DAY: the trim's cut is 3, not `stop` (4),
    which would purge DAY's execution too."""
    before = date(2026, 12, 3)
    js = SlowJournal([fill(1, before), fill(2, before), fill(3)], slow=2)
    assert await journal.first_seq_of(js, "ns", DAY, 1, 4) == 3
    # Only a journal with nothing pending ends the search at `stop`.
    assert await journal.first_seq_of(SlowJournal([fill(1, before), fill(2, before)], slow=2), "ns", DAY, 1, 3) == 3


async def test_a_journal_that_never_delivers_what_is_pending_is_unreachable(monkeypatch):
    monkeypatch.setattr(journal, "PATIENCE", 3)
    with pytest.raises(nats.errors.TimeoutError, match="nothing for 3 fetches of 1 s with 1 executions still pending"):
        await journal.first_seq_of(SlowJournal([fill(1)], slow=5), "ns", DAY, 1, 2)
    monkeypatch.setattr(journal.asyncio, "sleep", lambda _s: _no_wait())
    with pytest.raises(nats.errors.TimeoutError):  # the day's fills: read again, then said so
        await journal.fills(SlowJournal([fill(1)], slow=5), "ns", DAY)
