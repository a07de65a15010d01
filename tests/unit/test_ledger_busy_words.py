"""The ledger's answer to a call that waited in vain for a held account (handlers.bounded) is
UNAVAILABLE ACCOUNT_BUSY whatever happens while it looks for which account was held: that
lookup (two more statements) only chooses the answer's words."""
from __future__ import annotations

import asyncpg
import pytest

from ledger_svc.service_layer import handlers
from meshkit.errors import Unavailable


class WaitedInVain:
    """A unit of work whose first statement waited longer than the lock wait."""

    async def __aenter__(self):
        raise asyncpg.LockNotAvailableError("canceling statement due to lock timeout")

    async def __aexit__(self, *exc) -> bool:
        return False


async def test_a_busy_call_whose_lookup_of_the_held_account_fails_is_still_account_busy(monkeypatch):
    """Review of round 22: the lookup's failure (the pool gone, the server restarting) turned
    the ACCOUNT_BUSY into INTERNAL."""
    async def lookup_fails(*args, **kwargs):
        raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")

    monkeypatch.setattr(handlers, "held_accounts_now", lookup_fails)
    with pytest.raises(Unavailable) as busy:
        async with handlers.bounded(lambda: WaitedInVain(), 0.1, ["alice", "bob"], "nothing was held",
                                    "the same ids"):
            pass
    assert (busy.value.reason, busy.value.metadata, busy.value.retry_after_seconds) == (
        "ACCOUNT_BUSY", {"accountId": "alice"}, 1.0)
