from __future__ import annotations

import asyncpg

from ledger_svc.adapters.repository import LedgerRepository
from ledger_svc.domain.model import BookRef
from ledger_svc.adapters.settlement import SettlementRepository
from meshkit.uow import UnitOfWork


# The committed book ids of each database, by the pool that reaches it (a process may use
# several databases: the tests do, so a system book's id from one must never be used in another).
_BOOK_IDS: dict[asyncpg.Pool, dict[BookRef, int]] = {}


class LedgerUnitOfWork(UnitOfWork):
    ledger: LedgerRepository
    settlement: SettlementRepository

    def _open(self, conn: asyncpg.Connection) -> None:
        self.ledger = LedgerRepository(conn, _BOOK_IDS.setdefault(self.pool, {}))
        self.settlement = SettlementRepository(conn)
