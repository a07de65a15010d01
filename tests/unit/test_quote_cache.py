"""quote_svc's Redis cache writer (quote_svc/adapters/cache.py) with a Redis of its own in memory."""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from decimal import Decimal

from quote_svc.adapters.cache import RedisQuoteCache, quote_key
from quote_svc.domain.quotes import MarketData, next_quote
from stockmesh.quote.v1 import quote_pb2
from tests.support.wait import eventually


class _Pipeline:
    def __init__(self, redis: "_Redis") -> None:
        self.redis, self.sets = redis, {}

    async def __aenter__(self) -> "_Pipeline":
        return self

    async def __aexit__(self, *exc) -> None:
        pass

    def set(self, key: str, value: bytes) -> None:
        self.sets[key] = value

    async def execute(self) -> None:
        self.redis.writes += 1
        self.redis.values.update(self.sets)


class _Redis:
    """What RedisQuoteCache.run uses of redis.asyncio.Redis, counting the writes (round trips)."""

    def __init__(self) -> None:
        self.writes, self.values = 0, {}

    def pipeline(self, transaction: bool = True) -> _Pipeline:
        return _Pipeline(self)


async def test_changes_close_together_go_to_redis_in_one_write_and_the_last_is_written():
    """Round 26: a write per market-data event was a third of a quote_svc replica's CPU in a busy
    session. Changes that come within `spacing` of a write wait for the next, which has them all."""
    redis, quotes = _Redis(), {}
    writer = RedisQuoteCache(redis, "ns", refresh=3600, spacing=0.5)
    task = asyncio.create_task(writer.run(lambda: quotes))
    try:
        for _ in range(3):  # the writer starts (a full write of nothing)
            await asyncio.sleep(0)
        q = None
        for seq in range(1, 21):  # one change at a time, each seen by the writer before the next
            q = next_quote(q, MarketData("AAPL", seq, datetime.now(timezone.utc), Decimal("1"), 1, Decimal("2"), 1,
                                         Decimal("1.5"), seq, Decimal("1.5"), 1))
            quotes["AAPL"] = q
            writer.changed(q)
            for _ in range(3):
                await asyncio.sleep(0)

        def last_written() -> int:
            raw = redis.values.get(quote_key("ns", "AAPL"))
            return quote_pb2.Quote.FromString(raw).sequence if raw else 0

        assert await eventually(lambda: last_written() == 20, timeout=10)
        assert redis.writes <= 3, f"{redis.writes} writes for 20 changes in a burst"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
