"""What order_svc needs to know of the market: the latest quote of a symbol (the last
market-data event the engine published on JetStream) and trading halts."""
from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal

import asyncpg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from meshkit import bus
from stockmesh.matching.v1 import matching_pb2


@dataclass(frozen=True)
class Touch:
    bid: Decimal | None
    ask: Decimal | None
    last: Decimal | None


def _d(text: str) -> Decimal | None:
    return Decimal(text) if text else None


class JetStreamQuotes:
    def __init__(self, js: JetStreamContext, namespace: str) -> None:
        self.js = js
        self.stream = bus.stream_name(namespace, "MD")
        self.namespace = namespace

    async def touch(self, symbol: str) -> Touch:
        try:
            msg = await self.js.get_last_msg(self.stream, bus.subject(self.namespace, "md", symbol))
        except NotFoundError:
            return Touch(None, None, None)
        ev = matching_pb2.MarketDataEvent.FromString(msg.data)
        return Touch(_d(ev.bid_price), _d(ev.ask_price), _d(ev.last_price or ev.trade_price))


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
