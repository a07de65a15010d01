from __future__ import annotations

import asyncpg

from ledger_svc.adapters.repository import LedgerRepository
from ledger_svc.domain.model import BookRef
from ledger_svc.adapters.settlement import SettlementRepository
from meshkit.uow import UnitOfWork


# How many book ids a process keeps per database: a few per active account (cash, each
# symbol held), ~20 MB at this size. A book not kept is read again (one indexed SELECT).
BOOK_IDS_KEPT = 100_000


class BookIds(dict):
    """(owner, asset) -> book_id, at most `capacity` of them: the oldest kept goes first (round
    18 review: one entry per book the process ever touched, without end, with millions of
    customers)."""

    def __init__(self, capacity: int | None = None) -> None:
        super().__init__()
        self.capacity = capacity or BOOK_IDS_KEPT

    def __setitem__(self, key: BookRef, value: int) -> None:
        if key not in self:
            while len(self) >= self.capacity:
                del self[next(iter(self))]
        super().__setitem__(key, value)


# The committed book ids of each database, by the pool that reaches it (a process may use
# several databases: the tests do, so a system book's id from one must never be used in another).
_BOOK_IDS: dict[asyncpg.Pool, BookIds] = {}


class LedgerUnitOfWork(UnitOfWork):
    ledger: LedgerRepository
    settlement: SettlementRepository

    def _open(self, conn: asyncpg.Connection) -> None:
        self.ledger = LedgerRepository(conn, _BOOK_IDS.setdefault(self.pool, BookIds()))
        self.settlement = SettlementRepository(conn)
