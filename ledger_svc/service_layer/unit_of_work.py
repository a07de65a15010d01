from __future__ import annotations

import asyncpg

from ledger_svc.adapters.repository import LedgerRepository
from ledger_svc.adapters.settlement import SettlementRepository
from meshkit.uow import UnitOfWork


class LedgerUnitOfWork(UnitOfWork):
    ledger: LedgerRepository
    settlement: SettlementRepository

    def _open(self, conn: asyncpg.Connection) -> None:
        self.ledger = LedgerRepository(conn)
        self.settlement = SettlementRepository(conn)
