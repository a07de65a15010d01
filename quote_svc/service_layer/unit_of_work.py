from __future__ import annotations

import asyncpg

from meshkit.uow import UnitOfWork
from quote_svc.adapters.repository import CandleRepository


class QuoteUnitOfWork(UnitOfWork):
    candles: CandleRepository

    def _open(self, conn: asyncpg.Connection) -> None:
        self.candles = CandleRepository(conn)
