"""order_svc's recovery of half-way placements logs a dependency that is down for a while (the
ledger stalled, round 20's soak: three ERROR tracebacks in 20 s for an outage that healed itself)
as a WARNING, as the placement path does; anything else stays an ERROR with its traceback."""
from __future__ import annotations

import logging
import uuid
from types import SimpleNamespace

import pytest

from meshkit.errors import Unavailable
from order_svc.service_layer import handlers


class _Uow:
    def __init__(self, stalled: list[uuid.UUID]) -> None:
        async def stalled_since(_older_than):
            return stalled
        self.orders = SimpleNamespace(stalled=stalled_since)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        return None


@pytest.mark.parametrize("error, level, traced", [
    (Unavailable("the ledger could not transfer hold x; retry shortly"), logging.WARNING, False),
    (RuntimeError("a bug"), logging.ERROR, True),
])
async def test_recovery_logs_a_dependency_down_as_a_warning_and_a_bug_as_an_error(monkeypatch, caplog, error, level,
                                                                                    traced):
    order_id = uuid.uuid4()

    async def advance(oid, deps):
        raise error

    monkeypatch.setattr(handlers, "advance", advance)
    deps = SimpleNamespace(uow=lambda: _Uow([order_id]))
    with caplog.at_level(logging.WARNING, logger="order_svc.saga"):
        assert await handlers.recover_stalled(deps) == 1
    [record] = [r for r in caplog.records if r.name == "order_svc.saga"]
    assert record.levelno == level and record.orderId == str(order_id)
    assert (record.exc_info is not None) is traced
