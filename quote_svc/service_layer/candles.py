"""Candle use cases: fold trades in, read a page of candles, the last close."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Callable, Sequence

import asyncpg

from quote_svc.adapters.repository import CandleRepository
from quote_svc.domain.candles import Candle, Interval, advance, bucket_start, combine, fill, next_bucket, rollup
from quote_svc.domain.quotes import MarketData
from quote_svc.service_layer.unit_of_work import QuoteUnitOfWork

UowFactory = Callable[[], QuoteUnitOfWork]

# Which maintained width each interval is read from (rolled up at query time when coarser).
SOURCE_WIDTH = {Interval.S1: 1, Interval.M1: 60, Interval.M5: 60, Interval.M15: 60,
                Interval.H1: 3600, Interval.D1: 3600}


@dataclass(frozen=True)
class CandleQuery:
    symbol: str
    interval: Interval
    start: datetime
    end: datetime
    page_size: int
    # Where this page starts (a bucket start), from the page token; None for the first page.
    cursor: datetime | None = None


@dataclass(frozen=True)
class CandlePage:
    candles: list[Candle]
    next_cursor: datetime | None


async def record_trades(events: Sequence[MarketData], uow_factory: UowFactory) -> int:
    """Fold the trades among `events` into candles, in one transaction; repeats (the same
    symbol and md sequence, e.g. an engine replay) add nothing. Returns the trades seen."""
    trades = list({(e.symbol, e.sequence): e for e in events if e.is_trade}.values())
    if trades:
        async with uow_factory() as uow:
            await uow.candles.record_trades(trades)
            await uow.commit()
    return len(trades)


async def _load(repo: CandleRepository, q: CandleQuery, start: datetime, stop: datetime) -> dict[datetime, Candle]:
    traded = rollup(await repo.traded(q.symbol, SOURCE_WIDTH[q.interval], start, stop), q.interval)
    imported = rollup(await repo.imported(q.symbol, q.interval.seconds, start, stop), q.interval)
    return combine(imported, traded)


async def get_candles(q: CandleQuery, uow_factory: UowFactory, now: datetime | None = None) -> CandlePage:
    """One page of candles, in time order: every bucket overlapping [start, end), up to the one
    running now, with flat candles where nothing traded (see domain.candles.fill)."""
    now = now or datetime.now(timezone.utc)
    # Buckets starting before `end`, up to and including the one being built now.
    stop = min(q.end, next_bucket(bucket_start(now, q.interval), q.interval))
    cur = q.cursor or bucket_start(q.start, q.interval)
    size = q.page_size
    out: list[Candle] = []
    async with uow_factory() as uow:
        repo = uow.candles
        prev = await repo.close_before(q.symbol, cur)
        if prev is None:
            # Nothing before: skip straight to the first stored candle, if any.
            first = await repo.first_start(q.symbol, q.interval.seconds, cur, stop)
            if first is None:
                return CandlePage([], None)
            cur = max(cur, bucket_start(first, q.interval))
        while cur < stop and len(out) <= size:
            window_end = min(stop, advance(cur, q.interval, size + 1 - len(out)))
            # Whole buckets are loaded, also where `end` falls inside the last one.
            load_end = window_end if bucket_start(window_end, q.interval) == window_end \
                else next_bucket(bucket_start(window_end, q.interval), q.interval)
            out += fill(await _load(repo, q, cur, load_end), cur, window_end, q.interval, prev, now)
            if out:
                prev = out[-1].close
            cur = window_end
    if len(out) > size:
        return CandlePage(out[:size], out[size].start)
    return CandlePage(out, None)


async def last_close(pool: asyncpg.Pool | asyncpg.Connection, symbol: str) -> Decimal | None:
    """The latest close of `symbol`, from traded or imported candles; None if there is none.
    (For the market simulator: where a symbol's random walk starts.)"""
    if isinstance(pool, asyncpg.Pool):
        async with pool.acquire() as conn:
            return await CandleRepository(conn).close_before(symbol.upper(), None)
    return await CandleRepository(pool).close_before(symbol.upper(), None)
