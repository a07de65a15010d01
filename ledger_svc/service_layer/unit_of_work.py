from __future__ import annotations

from collections import OrderedDict

import asyncpg

from ledger_svc.adapters.repository import LedgerRepository
from ledger_svc.domain.model import BookRef
from ledger_svc.adapters.settlement import SettlementRepository
from meshkit.uow import UnitOfWork


# How many book ids a process keeps per database: a few per active account (cash, each
# symbol held), ~20 MB at this size. A book not kept is read again (one indexed SELECT).
BOOK_IDS_KEPT = 100_000


class BookIds(OrderedDict):
    """(owner, asset) -> book_id, at most `capacity` of them, the least recently used going
    first (round 18 review: one entry per book the process ever touched, without end, with
    millions of customers; an OrderedDict, as a dict's oldest key costs a scan past every one
    deleted before it)."""

    def __init__(self, capacity: int | None = None) -> None:
        super().__init__()
        self.capacity = capacity or BOOK_IDS_KEPT

    def get(self, key: BookRef, default: int | None = None) -> int | None:  # type: ignore[override]
        value = super().get(key)
        if value is None:
            return default
        self.move_to_end(key)
        return value

    def __setitem__(self, key: BookRef, value: int) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.capacity:
            self.popitem(last=False)


# The committed book ids of each database, by the pool that reaches it (a process may use
# several databases: the tests do, so a system book's id from one must never be used in another).
_BOOK_IDS: dict[asyncpg.Pool, BookIds] = {}


class LedgerUnitOfWork(UnitOfWork):
    ledger: LedgerRepository
    settlement: SettlementRepository

    def _open(self, conn: asyncpg.Connection) -> None:
        self.ledger = LedgerRepository(conn, _BOOK_IDS.setdefault(self.pool, BookIds()))
        self.settlement = SettlementRepository(conn)
