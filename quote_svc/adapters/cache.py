"""The latest quotes in Redis, for a replica that starts (ledger_svc values positions from
JetStream, not from here): key `<ns>:quote:<SYMBOL>`, value the serialized
`stockmesh.quote.v1.Quote` message (protobuf binary), no expiry.

Redis is only a cache. Writes are behind the feed (a task writes the symbols that changed,
conflated, at most one write every `spacing` seconds, plus every symbol every `refresh`
seconds, so a flushed Redis is whole again within that time even for a quiet symbol); a Redis
that is down or slow is logged and never delays the feed, the streams or GetQuote."""
from __future__ import annotations

import asyncio
import logging
from typing import Callable, Iterable

import redis.asyncio as aioredis

from meshkit import aio
from quote_svc.adapters.codec import quote_from_proto, quote_to_proto
from quote_svc.domain.quotes import Quote
from stockmesh.quote.v1 import quote_pb2

log = logging.getLogger("quote_svc.cache")


# The least time between two writes: the changes meanwhile go in the next one. A write is ~130 µs
# of a replica's CPU (redis-py's pipeline); written at every change, the market data of a busy
# session (an event or more per order) cost each replica a third of its CPU (round 26).
WRITE_SPACING = 0.1


def quote_key(namespace: str, symbol: str) -> str:
    return f"{namespace}:quote:{symbol}"


class RedisQuoteCache:
    def __init__(self, redis: aioredis.Redis | None, namespace: str, *, refresh: float = 10.0,
                 spacing: float = WRITE_SPACING) -> None:
        self.redis, self.namespace, self.refresh, self.spacing = redis, namespace, refresh, spacing
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self.healthy = True

    async def load(self, symbols: Iterable[str]) -> list[Quote]:
        """Whatever Redis holds for `symbols` (nothing when it does not answer)."""
        symbols = list(symbols)
        if self.redis is None or not symbols:
            return []
        try:
            values = await self.redis.mget([quote_key(self.namespace, s) for s in symbols])
        except Exception as exc:  # noqa: BLE001 - a cache that does not answer is no cache
            log.warning("redis unavailable; starting from the feed alone", extra={"error": repr(exc)})
            return []
        out = []
        for s, raw in zip(symbols, values):
            if raw:
                try:
                    q = quote_from_proto(quote_pb2.Quote.FromString(raw))
                except Exception:  # noqa: BLE001
                    log.warning("unreadable cached quote ignored", extra={"symbol": s})
                    continue
                if q.symbol == s:
                    out.append(q)
        return out

    def changed(self, quote: Quote) -> None:
        """Note a new quote (called by the book; never blocks)."""
        self._dirty.add(quote.symbol)
        self._wake.set()

    async def run(self, current: Callable[[], dict[str, Quote]]) -> None:
        """Write changed quotes (and all of them every `refresh` seconds), one write at most every
        `spacing` seconds, until cancelled."""
        if self.redis is None:
            return
        loop = asyncio.get_running_loop()
        next_full = loop.time()
        written_at = -self.spacing
        while True:
            await aio.wait_set(self._wake, next_full - loop.time())
            await asyncio.sleep(written_at + self.spacing - loop.time())  # (none when it is past)
            self._wake.clear()
            written_at = loop.time()
            quotes = current()
            if loop.time() >= next_full:
                symbols, next_full = set(quotes), loop.time() + self.refresh
            else:
                symbols = self._dirty
            self._dirty = set()
            if not symbols:
                continue
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for s in symbols:
                        if s in quotes:
                            pipe.set(quote_key(self.namespace, s), quote_to_proto(quotes[s]).SerializeToString())
                    await pipe.execute()
                if not self.healthy:
                    log.info("redis back; quotes written again")
                self.healthy = True
            except Exception as exc:  # noqa: BLE001 - the next round (or the refresh) writes them
                if self.healthy:
                    log.warning("cannot write quotes to redis", extra={"error": repr(exc)})
                self.healthy = False
                self._dirty |= symbols
                await asyncio.sleep(0.5)
