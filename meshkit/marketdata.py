"""The latest market of a symbol, read from the engine's market-data stream: the last
MarketDataEvent on `<ns>.md.<SYMBOL>` carries the top of the book and the last trade price."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from decimal import Decimal

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from meshkit import bus


@dataclass(frozen=True)
class Touch:
    bid: Decimal | None
    ask: Decimal | None
    last: Decimal | None


def _d(text: str) -> Decimal | None:
    return Decimal(text) if text else None


class JetStreamQuotes:
    """Reads are cached for `max_age` seconds per symbol (a hot symbol's orders share one
    read instead of each asking JetStream), and a symbol has at most one read in flight:
    callers arriving while it runs wait for it instead of each asking again (no stampede of
    reads every time the cached value expires)."""

    def __init__(self, js: JetStreamContext, namespace: str, max_age: float = 0.05) -> None:
        self.js = js
        self.stream = bus.stream_name(namespace, "MD")
        self.namespace = namespace
        self.max_age = max_age
        self._cache: dict[str, tuple[float, Touch]] = {}
        self._reading: dict[str, asyncio.Future[Touch]] = {}

    async def touch(self, symbol: str) -> Touch:
        hit = self._cache.get(symbol)
        if hit is not None and time.monotonic() - hit[0] < self.max_age:
            return hit[1]
        reading = self._reading.get(symbol)
        if reading is None:
            reading = self._reading[symbol] = asyncio.ensure_future(self._refresh(symbol))
            reading.add_done_callback(lambda _: self._reading.pop(symbol, None))
        # Shielded: a caller that gives up (a cancelled RPC) does not cancel the others' read.
        return await asyncio.shield(reading)

    async def _refresh(self, symbol: str) -> Touch:
        at = time.monotonic()
        value = await self._read(symbol)
        self._cache[symbol] = (at, value)
        return value

    async def _read(self, symbol: str) -> Touch:
        from stockmesh.matching.v1 import matching_pb2

        try:
            msg = await self.js.get_last_msg(self.stream, bus.subject(self.namespace, "md", symbol))
        except NotFoundError:
            return Touch(None, None, None)
        ev = matching_pb2.MarketDataEvent.FromString(msg.data)
        return Touch(_d(ev.bid_price), _d(ev.ask_price), _d(ev.last_price or ev.trade_price))
