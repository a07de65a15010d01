"""Trading halts, as order_svc sees them (the latest quote comes from meshkit.marketdata)."""
from __future__ import annotations

import time

import asyncpg


class Halts:
    """Halted symbols, read from orders.halts at most once a second."""

    def __init__(self, pool: asyncpg.Pool, ttl: float = 1.0) -> None:
        self.pool, self.ttl = pool, ttl
        self._at = 0.0
        self._halted: frozenset[str] = frozenset()

    async def is_halted(self, symbol: str) -> bool:
        if time.monotonic() - self._at > self.ttl:
            rows = await self.pool.fetch("SELECT symbol FROM orders.halts")
            self._halted, self._at = frozenset(r["symbol"] for r in rows), time.monotonic()
        return symbol in self._halted
