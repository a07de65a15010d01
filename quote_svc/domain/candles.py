"""Candles (OHLCV): interval arithmetic, rolling finer candles up into coarser ones, and
filling intervals without trades. Plain Python: datetimes in UTC, prices as Decimal.

Buckets: 1s, 1m, 5m, 15m and 1h are aligned to the Unix epoch (UTC); 1d is a trading day of
the session calendar (`meshkit.calendar.trading_day`, a New York date) and starts at midnight
New York time. A candle covers [start, start + width).
"""
from __future__ import annotations

import bisect
import enum
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any, Iterable, Iterator

from meshkit.calendar import NEW_YORK, session, trading_day
from meshkit.money import average_price

UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Interval(enum.Enum):
    S1 = 1
    M1 = 60
    M5 = 300
    M15 = 900
    H1 = 3600
    D1 = 86400

    @property
    def seconds(self) -> int:
        return self.value

    @property
    def label(self) -> str:
        return {1: "1s", 60: "1m", 300: "5m", 900: "15m", 3600: "1h", 86400: "1d"}[self.value]

    @classmethod
    def from_label(cls, text: str) -> "Interval":
        for i in cls:
            if i.label == text:
                return i
        raise ValueError(text)


def day_start(day: date) -> datetime:
    """Midnight New York of a trading day, in UTC."""
    return datetime.combine(day, time(0), tzinfo=NEW_YORK).astimezone(UTC)


_WIDTH = {i: i.value for i in Interval}
_STEP = {i: timedelta(seconds=i.value) for i in Interval}


def bucket_start(t: datetime, interval: Interval) -> datetime:
    if interval is Interval.D1:
        return day_start(trading_day(t))
    return EPOCH + timedelta(seconds=bucket_seconds(t, _WIDTH[interval]))


_SECOND = timedelta(seconds=1)


def bucket_seconds(t: datetime, width: int, *, up: bool = False) -> int:
    """Seconds since the epoch of the start of `t`'s bucket of `width` seconds (`up`: of the
    first bucket starting at or after `t`), in whole numbers: a float timestamp loses the
    microseconds far from 1970 (1000-01-01T00:00:00.999999 fell in the next second's bucket)."""
    if up:
        secs = -((EPOCH - t) // _SECOND)
        return -(-secs // width) * width
    secs = (t - EPOCH) // _SECOND
    return secs - secs % width


def next_bucket(start: datetime, interval: Interval) -> datetime:
    if interval is Interval.D1:
        return day_start(trading_day(start) + timedelta(days=1))
    return start + _STEP[interval]


def advance(start: datetime, interval: Interval, n: int) -> datetime:
    """The bucket start n buckets after `start` (a bucket start)."""
    if interval is Interval.D1:
        return day_start(trading_day(start) + timedelta(days=n))
    return start + timedelta(seconds=interval.seconds * n)


# The instants a query may name as its start and end. 1s-1h: all a datetime holds (which is
# google.protobuf.Timestamp's range, 0001-01-01 to 9999-12-31 UTC; the last buckets' ends are
# beyond it, but a bucket after the one running now is never computed). A 1d bucket is a New
# York day, so 1d queries stay a day inside: an instant before 0001-01-01 ~05:00Z is on a New
# York day of year 0, and the day of one after 9999-12-31 05:00Z ends in year 10000.
FIRST, LAST = datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)
FIRST_DAILY, LAST_DAILY = datetime(1, 1, 2, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC)


def time_range(interval: Interval) -> tuple[datetime, datetime]:
    """The first and last instant a query of `interval` may name (both included)."""
    return (FIRST_DAILY, LAST_DAILY) if interval is Interval.D1 else (FIRST, LAST)


def iso(at: datetime) -> str:
    """An instant as people read it in messages: 2024-03-04T14:30:00Z."""
    return at.isoformat().replace("+00:00", "Z")


def is_aligned(t: datetime, interval: Interval) -> bool:
    return bucket_start(t, interval) == t


def is_session_day(day: date) -> bool:
    """Days on which the session calendar has a session (weekdays that are not exchange
    holidays). A day without a session gets no flat 1d candle; a day with trades (an
    always-open simulated market) does."""
    return session(day) is not None


@dataclass(slots=True)
class Candle:
    start: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: int
    # None where an imported candle did not say.
    trade_count: int | None
    # Σ price × quantity; None when unknown (an imported candle without a vwap).
    pv: Decimal | None
    is_final: bool = True

    @property
    def vwap(self) -> Decimal | None:
        if self.pv is None or self.volume <= 0:
            return None
        return average_price(self.pv, self.volume)


@dataclass(frozen=True)
class Part:
    """A stored candle of some width, the input of a rollup. `first_at` and `last_at`: when its
    first and last trades were, where known (traded rows keep them; for imported candles summed
    up per bucket, where the first of them starts and the last ends); otherwise (an imported
    candle) it opens at its start, before a traded row's trade at that same instant, and closes
    at its end (start + width), after a traded row's trade before that instant: the close of
    an imported minute is the price at the end of the minute. CandleRepository.close_before
    orders candles the same way, so a flat candle's price does not depend on where a range or
    page starts (acceptance round 18: it took the imported close, the rollup a trade's)."""

    width: int
    candle: Candle
    imported: bool = False
    first_at: datetime | None = None
    last_at: datetime | None = None

    @property
    def opens_at(self) -> tuple[datetime, bool]:
        return self.first_at or self.candle.start, not self.imported

    @property
    def closes_at(self) -> tuple[datetime, bool]:
        if self.imported:
            return self.last_at or self.candle.start + timedelta(seconds=self.width), False
        return self.last_at or self.candle.start, True


def flat(start: datetime, price: Decimal) -> Candle:
    return Candle(start, price, price, price, price, 0, 0, Decimal(0))


def _total(values: list[Any]) -> Any:
    """The sum, or None (unknown) when any of them is."""
    return None if any(v is None for v in values) else sum(values)


def merge(parts: list[Part], start: datetime) -> Candle:
    """One candle of bucket `start` from parts inside it: the open of the part whose trades
    came first, the close of the one whose trades came last (each part by its own time, not
    by its source), sums added (unknown if unknown in any part)."""
    candles = [p.candle for p in parts]
    return Candle(
        start=start, open=min(parts, key=lambda p: p.opens_at).candle.open,
        high=max(c.high for c in candles), low=min(c.low for c in candles),
        close=max(parts, key=lambda p: p.closes_at).candle.close, volume=sum(c.volume for c in candles),
        trade_count=_total([c.trade_count for c in candles]), pv=_total([c.pv for c in candles]))


def rollup(parts: Iterable[Part], interval: Interval) -> dict[datetime, Candle]:
    """Candles of `interval` from finer (or equal) stored candles, traded and imported alike,
    keyed by bucket start.

    An imported part inside a coarser imported part is left out, so that history imported at
    two widths (say 1m and 1h for the same hour) is not counted twice; imported parts of
    periods no coarser one covers (1m rows of 14:30-14:33 beside a 5m row at 14:35) are all
    used, and so are traded parts (all of one width) beside them."""
    groups: dict[datetime, list[Part]] = {}
    for p in parts:
        groups.setdefault(bucket_start(p.candle.start, interval), []).append(p)
    out: dict[datetime, Candle] = {}
    for start, ps in sorted(groups.items()):
        if len(ps) == 1 and ps[0].candle.start == start:  # nothing to roll up
            out[start] = ps[0].candle
            continue
        out[start] = merge([p for p in ps if not p.imported] + _uncovered([p for p in ps if p.imported]), start)
    return out


def _uncovered(imported: list[Part]) -> list[Part]:
    """The imported parts no coarser imported part covers. Widths nest (a 1d bucket is whole
    hours, an hour whole 15m, 5m, 1m, 1s buckets), so a part is inside a coarser one exactly
    when its start falls in that one's bucket."""
    kept: list[Part] = []
    starts: dict[int, set[datetime]] = {}  # width -> starts of the kept parts of that width
    for p in sorted(imported, key=lambda p: -p.width):
        if not any(bucket_start(p.candle.start, Interval(w)) in spans for w, spans in starts.items() if w > p.width):
            kept.append(p)
            starts.setdefault(p.width, set()).add(p.candle.start)
    return kept


def bucket_starts(first: datetime, stop: datetime, interval: Interval) -> Iterator[datetime]:
    """Bucket starts from `first` (a bucket start) while before `stop`."""
    t = first
    while t < stop:
        yield t
        t = next_bucket(t, interval)


class Coverage:
    """The spans of coarser imported candles (start, end) around a query's buckets: what the
    history says happened at a resolution coarser than the one asked."""

    def __init__(self, spans: Iterable[tuple[datetime, datetime]] = ()) -> None:
        merged: list[list[datetime]] = []
        for start, end in sorted(spans):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self._starts = [s for s, _ in merged]
        self._ends = [e for _, e in merged]

    def overlaps(self, start: datetime, end: datetime) -> bool:
        i = bisect.bisect_left(self._starts, end) - 1  # the last span starting before `end`
        return i >= 0 and self._ends[i] > start


def fill(candles: dict[datetime, Candle], first: datetime, stop: datetime, interval: Interval,
         prev_close: Decimal | None, now: datetime, covered: Coverage | None = None) -> list[Candle]:
    """Every candle of the buckets [first, stop): the stored ones, and a flat one (no trades,
    open = high = low = close = the previous close) for each bucket without any. Buckets
    before any known close are left out; so are 1d buckets of days without a session and
    without trades, and buckets without candles of their own inside a coarser imported candle
    (`covered`): that history says there were trades, only not when (no data, not no trades).
    `is_final` is false for the bucket still running at `now`."""
    out: list[Candle] = []
    for start in bucket_starts(first, stop, interval):
        c = candles.get(start)
        if c is None:
            if prev_close is None:
                continue
            if interval is Interval.D1 and not is_session_day(trading_day(start)):
                continue
            if covered is not None and covered.overlaps(start, next_bucket(start, interval)):
                continue
            c = flat(start, prev_close)
        c.is_final = next_bucket(start, interval) <= now
        out.append(c)
        prev_close = c.close
    return out
