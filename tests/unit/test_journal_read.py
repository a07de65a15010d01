"""The execution journal read back for reconciliation (ledger_svc.adapters.journal.fill_ids)
is read again when JetStream does not answer for a moment: a clustered stream electing a new
leader after one of its servers died answered a fetch with ServiceUnavailableError, and
`stockmesh settle` ended in a traceback (a fresh-clone run of tests/e2e/test_nats_cluster.py)."""
from __future__ import annotations

from datetime import date, datetime, timezone
from types import SimpleNamespace

import nats.js.errors
import pytest

from ledger_svc.adapters import journal
from stockmesh.matching.v1 import matching_pb2

DAY = date(2026, 12, 4)


def fill(n: int) -> SimpleNamespace:
    ex = matching_pb2.Execution(execution_id=f"AAPL:{n}:0", symbol="AAPL", type=matching_pb2.EXECUTION_TYPE_FILL)
    ex.time.FromDatetime(datetime(2026, 12, 4, 15, tzinfo=timezone.utc))
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
        return Sub()


async def test_a_moment_without_an_answer_is_read_again(monkeypatch):
    monkeypatch.setattr(journal.asyncio, "sleep", lambda _s: _no_wait())
    js = Journal(failures=2)
    assert await journal.fill_ids(js, "ns", DAY) == {"AAPL:1:0", "AAPL:2:0"} and js.reads == 3
    with pytest.raises(nats.js.errors.ServiceUnavailableError):
        await journal.fill_ids(Journal(failures=3), "ns", DAY)  # still none after three: said so


async def _no_wait() -> None:
    return None
