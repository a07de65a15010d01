"""Candle use cases: fold trades in, read a page of candles, the last close."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Callable, Sequence

import asyncpg

from quote_svc.adapters.repository import CandleRepository
from quote_svc.domain.candles import (Candle, Coverage, Interval, advance, bucket_start, bucket_starts, fill,
                                      is_aligned, next_bucket, rollup)
from quote_svc.domain.quotes import MarketData
from quote_svc.service_layer.unit_of_work import QuoteUnitOfWork

UowFactory = Callable[[], QuoteUnitOfWork]

# Which maintained width each interval is read from (rolled up at query time when coarser).
# Imported candles are read up to the interval's own width: a coarser imported candle is no
# data of a finer interval, neither a candle nor a close to fill its gaps from (else the first
# known close, and so which buckets a query gets, would depend on where the range starts).
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
    # The cached run the first `cached` candles were taken from (the same objects), if any.
    run: "FinalCandles | None" = None
    cached: int = 0


async def record_trades(events: Sequence[MarketData], uow_factory: UowFactory) -> int:
    """Fold the trades among `events` into candles, in one transaction; repeats (the same
    symbol and md sequence, e.g. an engine replay) add nothing. Returns the trades seen."""
    trades = list({(e.symbol, e.sequence): e for e in events if e.is_trade}.values())
    if trades:
        async with uow_factory() as uow:
            await uow.candles.record_trades(trades)
            await uow.commit()
    return len(trades)


async def _load(repo: CandleRepository, q: CandleQuery, start: datetime,
                stop: datetime) -> tuple[dict[datetime, Candle], Coverage]:
    """The candles of the buckets [start, stop), and where coarser imported candles lie. The
    stored rows are summed up per bucket in PostgreSQL (a row or two per bucket come back),
    not here: a year of imported minutes rolled up row by row held the event loop, and every
    live quote stream with it, for seconds (round 27)."""
    starts = list(bucket_starts(start, stop, q.interval))
    if not starts:
        return {}, Coverage()
    traded, imported, coarser = await repo.rolled_up(q.symbol, SOURCE_WIDTH[q.interval], q.interval.seconds,
                                                     starts, stop)
    return rollup(traded + imported, q.interval), Coverage(coarser)


@dataclass(frozen=True)
class FinalCandles:
    """A cached run of final candles of one symbol and interval: exactly the candles a page
    starting at the cache key's bucket `cur` (`prev` being the close before it) produces for
    the buckets before `until`, all final; they start at `base` (the first stored candle when
    nothing came before `cur`). `fingerprint` summarises the stored rows of [cur, fp_until)
    (which holds [base, until)) as they were *before* these candles were read, so any write
    there afterwards (a late trade, an import) makes it differ and the run is rebuilt."""

    base: datetime
    prev: Decimal | None
    fingerprint: str
    fp_until: datetime
    until: datetime
    candles: list[Candle]
    # Filled lazily by the caller (the servicer): candles[i] rendered, e.g. serialized.
    rendered: list = field(default_factory=list, compare=False)

    def render(self, n: int, render: Callable[[Candle], Any]) -> list:
        """The first n candles rendered with `render`, each rendered once per run."""
        while len(self.rendered) < n:
            self.rendered.append(render(self.candles[len(self.rendered)]))
        return self.rendered[:n]


class CandleCache:
    """Final candles per (symbol, interval, first bucket), least recently used dropped.
    Completed candles change only when a late trade or an import lands in their buckets;
    every use checks a fingerprint of those rows in PostgreSQL (one small aggregate), so a
    write by any replica's candle writer or by `stockmesh candles import` is seen at once."""

    def __init__(self, max_entries: int = 256) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, FinalCandles] = OrderedDict()

    def get(self, key: tuple) -> FinalCandles | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: tuple, entry: FinalCandles) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def _whole(end: datetime, interval) -> datetime:
    """`end`, moved on to the end of the bucket it falls in: whole buckets are read, also where
    a range ends inside its last one. The symbol's first trade or imported close is looked for
    up to there too (round 16: a range ending before the first trade, inside its bucket, left
    that bucket out, and a request answered from the cache had it)."""
    return end if is_aligned(end, interval) else next_bucket(bucket_start(end, interval), interval)


async def _series(repo: CandleRepository, q: CandleQuery, cur: datetime, stop: datetime, want: int,
                  prev: Decimal | None, now: datetime) -> tuple[list[Candle], datetime]:
    """Up to `want` candles of the buckets [cur, stop), `prev` being the close before `cur`;
    and where they end (every candle of the buckets before it is in the list)."""
    out: list[Candle] = []
    if prev is None:
        # Nothing before: skip straight to the first stored candle, if any.
        first = await repo.first_start(q.symbol, q.interval.seconds, cur, _whole(stop, q.interval))
        if first is None:
            return out, max(cur, stop)
        cur = max(cur, bucket_start(first, q.interval))
    while cur < stop and len(out) < want:
        window_end = min(stop, advance(cur, q.interval, want - len(out)))
        load_end = _whole(window_end, q.interval)
        candles, covered = await _load(repo, q, cur, load_end)
        out += fill(candles, cur, window_end, q.interval, prev, now, covered)
        if out:
            prev = out[-1].close
        cur = window_end
    return out, cur


async def get_candles(q: CandleQuery, uow_factory: UowFactory, now: datetime | None = None,
                      cache: CandleCache | None = None) -> CandlePage:
    """One page of candles, in time order: every bucket overlapping [start, end), up to the one
    running now, with flat candles where nothing traded (see domain.candles.fill).

    With a `cache`, the final candles at the front of the page come from it (checked against
    the stored rows first) and only the rest, normally the candle still running, is built."""
    now = now or datetime.now(timezone.utc)
    # Buckets starting before `end`, up to and including the one being built now.
    stop = min(q.end, next_bucket(bucket_start(now, q.interval), q.interval))
    cur = q.cursor or bucket_start(q.start, q.interval)
    if cur >= stop:
        # Nothing yet: not a bucket is computed past now (at the end of the calendar, past
        # where a datetime reaches).
        return CandlePage([], None)
    size = q.page_size
    async with uow_factory().reads() as uow:
        repo = uow.candles
        run = None
        if cache is None:
            prev = await repo.close_before(q.symbol, cur, q.interval.seconds)
        else:
            run, cur, prev = await _cached_run(repo, cache, q, cur, stop, now)
            if run is None and cur >= stop:
                return CandlePage([], None)
        out: list[Candle] = []
        if run is not None:
            # The run may reach further than this query's end (built for a longer one).
            out = [c for c in run.candles[:size + 1] if c.start < stop]
            cur = max(cur, run.until)
            prev = out[-1].close if out else run.prev
        if len(out) <= size and cur < stop:
            more, _ = await _series(repo, q, cur, stop, size + 1 - len(out), prev, now)
            out += more
    cached = min(len(run.candles), len(out), size) if run is not None else 0
    if len(out) > size:
        return CandlePage(out[:size], out[size].start, run, cached)
    return CandlePage(out, None, run, cached)


def _final_end(q: CandleQuery, base: datetime, stop: datetime, now: datetime) -> datetime:
    """Where the final buckets a page from `base` can need end: before the bucket running now,
    wholly before the query's end, at most one page of buckets."""
    return min(bucket_start(now, q.interval), bucket_start(stop, q.interval), advance(base, q.interval, q.page_size + 1))


async def _cached_run(repo: CandleRepository, cache: CandleCache, q: CandleQuery, cur: datetime, stop: datetime,
                      now: datetime) -> tuple[FinalCandles | None, datetime, Decimal | None]:
    """The run of final candles a page starting at `cur` begins with, checked and extended as
    far as the page needs; None when nothing of the page is final yet (then also where the
    candles start and the close before, for building them all)."""
    key = (q.symbol, q.interval, cur)
    width, max_width = SOURCE_WIDTH[q.interval], q.interval.seconds
    run = cache.get(key)
    if run is not None:
        # One statement: the close before the page and the fingerprints of the run's rows.
        target = max(run.fp_until, _final_end(q, run.base, stop, now))
        prev, old, new = await repo.fingerprints(q.symbol, width, max_width, cur, run.fp_until, target,
                                                 with_close=True)
        if prev != run.prev or old != run.fingerprint:
            run = None
        elif run.fp_until < target:
            run = replace(run, fingerprint=new, fp_until=target, rendered=list(run.rendered))
    if run is None:
        prev = await repo.close_before(q.symbol, cur, max_width)
        base = cur
        if prev is None:
            # Before the symbol's history: the candles start at its first stored one (the same
            # candles `_series` would produce, skipping the empty buckets).
            first = await repo.first_start(q.symbol, max_width, cur, _whole(stop, q.interval))
            if first is None:
                return None, stop, None
            base = max(cur, bucket_start(first, q.interval))
        target = _final_end(q, base, stop, now)
        if target <= base:
            return None, base, prev
        # Taken before the candles are read: a write racing with this read changes it later.
        # It starts at `cur`, so a trade before the first one also changes it.
        _, _, new = await repo.fingerprints(q.symbol, width, max_width, cur, cur, target)
        run = FinalCandles(base, prev, new, target, base, [])
    final_end = _final_end(q, run.base, stop, now)
    if run.until < final_end and len(run.candles) <= q.page_size:
        last = run.candles[-1].close if run.candles else run.prev
        more, until = await _series(repo, q, run.until, final_end, q.page_size + 1 - len(run.candles), last, now)
        run = replace(run, until=until, candles=run.candles + more, rendered=list(run.rendered))
    cache.put(key, run)
    return run, run.base, run.prev


async def last_close(pool: asyncpg.Pool | asyncpg.Connection, symbol: str) -> Decimal | None:
    """The latest close of `symbol`, from traded or imported candles; None if there is none.
    (For the market simulator: where a symbol's random walk starts.)"""
    if isinstance(pool, asyncpg.Pool):
        async with pool.acquire() as conn:
            return await last_close(conn, symbol)
    return await CandleRepository(pool).close_before(symbol.upper(), None, Interval.D1.seconds)
