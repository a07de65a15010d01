"""Historical candles from a CSV file: the columns, and the checks every row must pass.

Columns (a header line names them; any order): symbol, start_time, interval, open, high, low,
close, volume, and optionally trade_count and vwap. `interval` is one of 1s 1m 5m 15m 1h 1d.
`start_time` is ISO 8601 with a UTC offset (`2024-03-04T14:30:00Z`) aligned to the interval;
a 1d row names its trading day: a date (`2024-03-04`) or midnight New York of that day.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Iterable, Iterator

from meshkit.calendar import holiday, trading_day
from meshkit.errors import Violations
from meshkit.money import MAX_PRICE, parse_decimal
from meshkit.symbols import on_tick, tick_size
from quote_svc.domain.candles import Interval, day_start, is_aligned, is_session_day, iso, next_bucket, time_range

REQUIRED = ("symbol", "start_time", "interval", "open", "high", "low", "close", "volume")
OPTIONAL = ("trade_count", "vwap")
# Per row. A candle rolls up at most 86,400 rows of one width (1s rows into a day) beside its
# traded volume, so its volume and trade count stay far inside the int64 of the wire and the
# database's bigint (a volume of 10^23 crashed the import in PostgreSQL).
MAX_COUNT = 10**12


class MalformedRow(ValueError):
    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line = line
        self.problem = problem


@dataclass(frozen=True)
class ImportedCandle:
    symbol: str
    width: int
    start: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: int
    trade_count: int | None
    vwap: Decimal | None

    @property
    def key(self) -> tuple[str, int, datetime]:
        return self.symbol, self.width, self.start


def _price(text: str, name: str, *, places: int = 4) -> Decimal:
    """A positive price in plain decimal notation, as money and prices everywhere else (no
    exponent: `6E1` is refused; ASCII digits only)."""
    v = Violations()
    value = parse_decimal(text, name, v, places=places, maximum=MAX_PRICE)
    if value is None:
        problem = v.items[0].description
        raise ValueError(f"{name} {problem}" + ("" if "got" in problem else f", got {text!r}"))
    return value


def _on_tick(value: Decimal, name: str, text: str) -> Decimal:
    """A traded price is on the tick, as every order's price is (0.01 at 1.00 and above)."""
    if not on_tick(value):
        raise ValueError(f"{name} must be a multiple of the tick size {tick_size(value)}, got {text!r}")
    return value


def _count(text: str, name: str) -> int:
    """A whole number of shares or trades, at most MAX_COUNT."""
    if not (text.isascii() and text.isdigit()):  # not "²" or "٣", which str.isdigit() also takes
        raise ValueError(f"{name} must be a whole number ≥ 0, got {text!r}")
    value = int(text)
    if value > MAX_COUNT:
        raise ValueError(f"{name} must be at most {MAX_COUNT:,}, got {text!r}")
    return value


def _within(t: datetime, interval: Interval, text: str) -> datetime:
    """`t`, if GetCandles may name it for a 1d candle, whatever `interval`: every row is also
    part of its day's 1d candle, which is not computable beyond (round 16: a 1m row at
    0001-01-01T00:00:00Z, on a New York day of year 0, was taken, and every GetCandles over it
    was INTERNAL)."""
    first, last = time_range(Interval.D1)
    if not first <= t <= last:
        raise ValueError(f"start_time must be from {iso(first)} to {iso(last)} (a row is part of its New York "
                         f"day's 1d candle too), got {text!r}")
    return t


def _below_microseconds(text: str) -> bool:
    """Whether an ISO time has a non-zero digit past the sixth of its fraction of a second,
    which datetime.fromisoformat drops (round 27: 15:00:00.000000001Z was taken as the 15:00
    candle, and overwrote it)."""
    fraction = re.search(r"[.,](\d+)", text)
    return fraction is not None and fraction.group(1)[6:].strip("0") != ""


def _start(text: str, interval: Interval) -> datetime:
    if interval is Interval.D1 and len(text) == 10:
        try:
            return _within(day_start(date.fromisoformat(text)), interval, text)
        except (ValueError, OverflowError):
            raise ValueError(f"start_time must be a date like 2024-03-04 from 0001-01-02 to 9999-12-30, "
                             f"got {text!r}") from None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"start_time must be an ISO 8601 time like 2024-03-04T14:30:00Z, got {text!r}") from None
    if t.tzinfo is None:
        raise ValueError(f"start_time needs a UTC offset (e.g. a trailing Z), got {text!r}")
    try:
        t = _within(t.astimezone(timezone.utc), interval, text)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00
        raise ValueError(f"start_time {text!r} is before 0001-01-01 UTC") from None
    if not is_aligned(t, interval) or _below_microseconds(text):
        where = "midnight New York of a trading day (or write the date)" if interval is Interval.D1 \
            else f"a multiple of {interval.label} since the Unix epoch"
        raise ValueError(f"start_time {text} is not the start of a {interval.label} candle: it must be {where}")
    return t


def _history(start: datetime, interval: Interval, now: datetime) -> None:
    """A daily candle is of a day with a session; every candle is over by `now`."""
    if interval is Interval.D1 and not is_session_day(day := trading_day(start)):
        raise ValueError(f"{day} is {holiday(day) or f'a {day:%A}'}, a day without a session: a 1d row must be "
                         "of a trading day (a weekday that is not an exchange holiday)")
    if start > now or next_bucket(start, interval) > now:
        raise ValueError(f"the {interval.label} candle from {iso(start)} is not over yet (now is {iso(now)}): "
                         "only finished candles can be imported")


def parse_row(row: dict[str, str], listed: set[str], now: datetime | None = None) -> ImportedCandle:
    """One row, checked; `now` (default: the clock) is what it must have ended by."""
    values = {k: (row.get(k) or "").strip() for k in (*REQUIRED, *OPTIONAL)}
    for k in REQUIRED:
        if not values[k]:
            raise ValueError(f"{k} is empty")
    symbol = values["symbol"].upper()
    if symbol not in listed:
        raise ValueError(f"unknown symbol {values['symbol']!r}")
    try:
        interval = Interval.from_label(values["interval"])
    except ValueError:
        raise ValueError(f"interval must be one of {', '.join(i.label for i in Interval)}, "
                         f"got {values['interval']!r}") from None
    start = _start(values["start_time"], interval)
    _history(start, interval, now or datetime.now(timezone.utc))
    o, h, lo, c = (_on_tick(_price(values[k], k), k, values[k]) for k in ("open", "high", "low", "close"))
    if not (lo <= o <= h and lo <= c <= h):
        raise ValueError(f"prices must satisfy low ≤ open, close ≤ high (open {o}, high {h}, low {lo}, close {c})")
    volume = _count(values["volume"], "volume")
    trade_count = _count(values["trade_count"], "trade_count") if values["trade_count"] else None
    vwap = _price(values["vwap"], "vwap", places=6) if values["vwap"] else None
    if vwap is not None and not lo <= vwap <= h:
        raise ValueError(f"vwap {vwap} is outside [low, high] = [{lo}, {h}]")
    if trade_count == 0 and volume > 0:
        raise ValueError("trade_count is 0 but volume is not")
    if volume == 0 and trade_count:
        raise ValueError(f"trade_count is {trade_count} but volume is 0: every trade has a quantity")
    if volume == 0 and vwap is not None:
        raise ValueError("vwap is given but volume is 0: there is no volume to weight")
    return ImportedCandle(symbol, interval.seconds, start, o, h, lo, c, volume, trade_count, vwap)


def parse(header: list[str] | None, rows: Iterable[tuple[int, dict[str, str]]],
          listed: set[str], now: datetime | None = None) -> Iterator[ImportedCandle]:
    """Check the header, then each (line number, row); raises MalformedRow naming the line.
    Every candle must have ended by `now` (default: the clock when the check starts)."""
    now = now or datetime.now(timezone.utc)
    names = [h.strip() for h in header or []]
    missing = [k for k in REQUIRED if k not in names]
    if missing:
        raise MalformedRow(1, f"the header lacks column(s) {', '.join(missing)} "
                              f"(expected {','.join(REQUIRED)}[,{','.join(OPTIONAL)}])")
    unknown = [k for k in names if k not in REQUIRED + OPTIONAL]
    if unknown:
        raise MalformedRow(1, f"unknown column(s) {', '.join(unknown)}")
    twice = sorted({k for k in names if names.count(k) > 1})
    if twice:  # round 16: the last of them was taken, silently, and changed a stored candle
        raise MalformedRow(1, f"column(s) named more than once: {', '.join(twice)}")
    seen: dict[tuple[str, int, datetime], int] = {}
    for line, row in rows:
        if None in row:  # more fields than the header names
            raise MalformedRow(line, f"{len(names) + len(row[None])} fields, the header names {len(names)}")  # type: ignore[index]
        try:
            candle = parse_row(row, listed, now)
        except ValueError as exc:
            raise MalformedRow(line, str(exc)) from None
        if candle.key in seen:
            raise MalformedRow(line, f"the same candle as line {seen[candle.key]} "
                                     f"({candle.symbol} {candle.start.isoformat()})")
        seen[candle.key] = line
        yield candle
