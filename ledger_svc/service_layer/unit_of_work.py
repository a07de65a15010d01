from __future__ import annotations

import asyncpg

from ledger_svc.adapters.repository import LedgerRepository
from meshkit.uow import UnitOfWork


class LedgerUnitOfWork(UnitOfWork):
    ledger: LedgerRepository

    def _open(self, conn: asyncpg.Connection) -> None:
        self.ledger = LedgerRepository(conn)
