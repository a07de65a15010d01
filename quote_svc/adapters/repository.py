"""The only SQL of quote_svc: trades folded into candles, candles read back, imported
history. Prices are NUMERIC and come back as exact Decimals."""
from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Sequence

import asyncpg

from quote_svc.domain.candles import EPOCH, Candle, Interval, Part, bucket_seconds, next_bucket
from quote_svc.domain.history import ImportedCandle
from quote_svc.domain.quotes import MarketData

# The widths maintained for traded candles (see the migration).
MAINTAINED = (1, 60, 3600)
# The widths history may be imported at (see the migration).
IMPORTED_WIDTHS = tuple(i.seconds for i in Interval)
# How long before a bucket an imported candle may start and still overlap it: the longest
# candle, a New York day, is 25 hours on the day daylight saving time ends.
COVER_BEFORE = "25 hours"

_RECORD_TRADES = """
WITH new AS (
    INSERT INTO quotes.trades AS t (symbol, md_seq, traded_at, price, quantity)
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::timestamptz[], $4::numeric[], $5::bigint[])
    ON CONFLICT DO NOTHING
    RETURNING t.*
), agg AS (
    SELECT n.symbol, w.width_s,
           date_bin(make_interval(secs => w.width_s), n.traded_at, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS start_time,
           (array_agg(n.price ORDER BY n.traded_at, n.md_seq))[1] AS open,
           max(n.price) AS high, min(n.price) AS low,
           (array_agg(n.price ORDER BY n.traded_at DESC, n.md_seq DESC))[1] AS close,
           sum(n.quantity) AS volume, count(*) AS trade_count, sum(n.price * n.quantity) AS pv,
           min(n.traded_at) AS first_at,
           (array_agg(n.md_seq ORDER BY n.traded_at, n.md_seq))[1] AS first_seq,
           max(n.traded_at) AS last_at,
           (array_agg(n.md_seq ORDER BY n.traded_at DESC, n.md_seq DESC))[1] AS last_seq
    FROM new n CROSS JOIN unnest($6::int[]) AS w(width_s)
    GROUP BY 1, 2, 3
)
INSERT INTO quotes.candles AS c (symbol, width_s, start_time, open, high, low, close, volume, trade_count, pv,
                                 first_at, first_seq, last_at, last_seq)
SELECT symbol, width_s, start_time, open, high, low, close, volume, trade_count, pv,
       first_at, first_seq, last_at, last_seq
FROM agg ORDER BY symbol, width_s, start_time
ON CONFLICT (symbol, width_s, start_time) DO UPDATE SET
    open = CASE WHEN (excluded.first_at, excluded.first_seq) < (c.first_at, c.first_seq) THEN excluded.open ELSE c.open END,
    first_at = LEAST(c.first_at, excluded.first_at),
    first_seq = CASE WHEN (excluded.first_at, excluded.first_seq) < (c.first_at, c.first_seq) THEN excluded.first_seq ELSE c.first_seq END,
    close = CASE WHEN (excluded.last_at, excluded.last_seq) > (c.last_at, c.last_seq) THEN excluded.close ELSE c.close END,
    last_at = GREATEST(c.last_at, excluded.last_at),
    last_seq = CASE WHEN (excluded.last_at, excluded.last_seq) > (c.last_at, c.last_seq) THEN excluded.last_seq ELSE c.last_seq END,
    high = GREATEST(c.high, excluded.high),
    low = LEAST(c.low, excluded.low),
    volume = c.volume + excluded.volume,
    trade_count = c.trade_count + excluded.trade_count,
    pv = c.pv + excluded.pv
"""


# The imported candles wider than $2 that may overlap [$3, $4) (with `start_time < $4`): the
# spans around a query's rows, which imported() and rolled_up() both read.
_WIDER_AROUND = f"(width_s > $2 AND start_time > $3::timestamptz - interval '{COVER_BEFORE}')"

# Σ price × quantity of an imported candle: unknown without a vwap, except that a candle without
# volume adds nothing (the importer requires its vwap to be empty; round 27: it made the vwap
# of every coarser candle around it unknown).
_PV = "CASE WHEN volume = 0 THEN 0 ELSE vwap * volume END"

# The traded rows ($2 wide) of consecutive buckets starting at $3 (the last one ending at $4),
# summed up per bucket `k` (the 1-based index into $3): open and close of the rows whose first
# and last trades come first and last (rows of different buckets never have a trade at the same
# instant), as domain.candles.merge chooses them.
_TRADED_BUCKETS = """
SELECT width_bucket(start_time, $3::timestamptz[]) AS k,
       (array_agg(open ORDER BY first_at))[1] AS open, max(high) AS high, min(low) AS low,
       (array_agg(close ORDER BY last_at DESC))[1] AS close,
       sum(volume) AS volume, sum(trade_count) AS trade_count, sum(pv) AS pv,
       min(first_at) AS first_at, max(last_at) AS last_at
FROM quotes.candles
WHERE symbol = $1 AND width_s = $2 AND start_time >= ($3::timestamptz[])[1] AND start_time < $4
GROUP BY 1
"""

# The widths of the imported rows among $2 that start in [$3, $4).
_WIDTHS_PRESENT = """
SELECT coalesce(array_agg(w ORDER BY w), '{}') FROM unnest($2::int[]) AS w
WHERE EXISTS (SELECT 1 FROM quotes.imported_candles
              WHERE symbol = $1 AND width_s = w AND start_time >= $3 AND start_time < $4)
"""


def _imported_buckets(widths: Sequence[int]) -> str:
    """The imported rows (of `widths`, those present, up to $2 wide) of the same buckets, summed
    up per bucket the way domain.candles.rollup does: a row inside a coarser imported row (its
    start in that row's bucket: epoch-aligned up to 1h; for 1d, the query's own New York day,
    bucket k) is left out; of the others, sums added (unknown when any row's is), the open of
    the one starting first, the close of the one ending last (an imported candle opens at its
    start and closes at its end; of the rows kept, no two start or end at the same instant, as
    widths nest). Which rows are covered is found per wider width present by the start of the
    row's bucket of that width among the starts of the imported rows of that width (few: a
    hashed subplan), not by joining the rows with themselves (no plan of that held up on a fresh
    table) nor by a window over the buckets (it sorted every row once per wider width, spilling
    to disk: 730 ms for 200,000 minutes imported with their hours and days; review of round 27)."""
    assert all(w in IMPORTED_WIDTHS for w in widths), widths  # interpolated below: our own ints only
    wider = sorted(widths)[1:]

    def bucket(w: int) -> str:
        if w == Interval.D1.seconds:
            return "($2::timestamptz[])[k]"
        return f"date_bin(make_interval(secs => {w}), start_time, TIMESTAMPTZ '1970-01-01 00:00:00+00')"

    kept = " AND ".join(
        f"NOT (width_s < {w} AND {bucket(w)} IN (SELECT start_time FROM quotes.imported_candles WHERE symbol = $1"
        f" AND width_s = {w} AND start_time >= ($2::timestamptz[])[1] AND start_time < $4))" for w in wider) or "true"
    return f"""
SELECT k, (array_agg(open ORDER BY start_time))[1] AS open, max(high) AS high, min(low) AS low,
       (array_agg(close ORDER BY end_time DESC))[1] AS close, sum(volume) AS volume,
       CASE WHEN count(trade_count) = count(*) THEN sum(trade_count) END AS trade_count,
       CASE WHEN count(pv) = count(*) THEN sum(pv) END AS pv,
       min(start_time) AS first_at, max(end_time) AS last_at
FROM (
    SELECT width_s, start_time, open, high, low, close, volume, trade_count, {_PV} AS pv,
           start_time + make_interval(secs => width_s) AS end_time,
           width_bucket(start_time, $2::timestamptz[]) AS k
    FROM quotes.imported_candles
    WHERE symbol = $1 AND width_s = ANY($3::int[]) AND start_time >= ($2::timestamptz[])[1] AND start_time < $4
) r
WHERE {kept}
GROUP BY k
"""

# Summaries of the rows a query reads, before ($5) and before ($6) (see fingerprints()). The
# traded rows of whole coarser buckets [$9, $10) are summarised by the coarser maintained rows
# ($8 wide) instead: every trade is folded into each maintained width in the same statement,
# so a coarse row's volume and trade count are the sums of its finer rows' and change exactly
# when one of them does (a day of 1-minute rows is read as 24 hourly ones). Traded rows are
# summarised by those two sums only, which do not depend on which rows were read: the candle
# writer only adds trades, so any write raises the trade count.
_FINGERPRINTS = """
WITH t AS (
    SELECT start_time, volume, trade_count FROM quotes.candles
    WHERE symbol = $1 AND width_s = $2 AND start_time >= $4 AND start_time < $7
      AND NOT (start_time >= $9 AND start_time < $10)
    UNION ALL
    SELECT start_time, volume, trade_count FROM quotes.candles
    WHERE symbol = $1 AND width_s = $8 AND start_time >= $9 AND start_time < $10
), i AS (
    SELECT start_time,
           hashtextextended((width_s, start_time, open, high, low, close, volume, trade_count, vwap)::text, 0) AS h
    FROM quotes.imported_candles
    WHERE symbol = $1 AND start_time < $7
      AND (width_s <= $3 AND start_time >= $4
           -- coarser ones around the range: their buckets get no flat candles (see fill)
           OR width_s > $3 AND start_time > $4::timestamptz - interval '%s')
), ta AS (
    SELECT concat_ws(',', sum(volume) FILTER (WHERE start_time < $5), sum(trade_count) FILTER (WHERE start_time < $5)) AS old,
           concat_ws(',', sum(volume) FILTER (WHERE start_time < $6), sum(trade_count) FILTER (WHERE start_time < $6)) AS new
    FROM t
), ia AS (
    SELECT concat_ws(',', count(*) FILTER (WHERE start_time < $5), sum(h) FILTER (WHERE start_time < $5)) AS old,
           concat_ws(',', count(*) FILTER (WHERE start_time < $6), sum(h) FILTER (WHERE start_time < $6)) AS new
    FROM i
)
SELECT ta.old || '/' || ia.old AS old, ta.new || '/' || ia.new AS new FROM ta, ia
""" % COVER_BEFORE

# The close before a bucket ($2 of CandleRepository.close_before): the last candle ending at or
# before it (None: the latest of all), traded or imported at a width up to $3 (a query's
# interval: coarser imported candles are not data of a finer interval, see
# service_layer.candles). Of candles ending at the same instant the imported one closes last,
# the coarsest of them (its trades were before its end; a finer imported one inside it is
# not counted beside it), as domain.candles.Part orders them in a rollup. (`coalesce`, not
# `$2 IS NULL OR`: PostgreSQL's generic plan of a prepared statement can then still
# range-scan the index.)
_CLOSE_BEFORE = (
    "SELECT close FROM ("
    " (SELECT close, start_time + interval '1 second' AS ends, 0 AS width FROM quotes.candles"
    "  WHERE symbol = $1 AND width_s = 1 AND start_time < coalesce($2::timestamptz, 'infinity')"
    "  ORDER BY start_time DESC LIMIT 1)"
    " UNION ALL"
    " (SELECT close, start_time + make_interval(secs => width_s) AS ends, width_s FROM quotes.imported_candles"
    "  WHERE symbol = $1 AND width_s <= $3"
    "  AND start_time + make_interval(secs => width_s) <= coalesce($2::timestamptz, 'infinity')"
    "  ORDER BY start_time + make_interval(secs => width_s) DESC, width_s DESC LIMIT 1)) x "
    "ORDER BY ends DESC, width DESC LIMIT 1")

# Both in one round trip: the close before `start` ($4) and the fingerprints.
_FINGERPRINTS_AND_CLOSE = _FINGERPRINTS.replace(
    "\nSELECT ", "\nSELECT (" + _CLOSE_BEFORE.replace("$2", "$4") + ") AS prev,\n       ", 1)


def _coarse_buckets(width: int, start: datetime, end: datetime) -> tuple[int, datetime, datetime]:
    """The next coarser maintained width and the whole buckets of it within [start, end)
    (an empty range when there are none)."""
    coarse = next((w for w in MAINTAINED if w > width), None)
    if coarse is None:
        return width, start, start
    first, last = bucket_seconds(start, coarse, up=True), bucket_seconds(end, coarse)
    if first >= last:
        return coarse, start, start
    return coarse, EPOCH + timedelta(seconds=first), EPOCH + timedelta(seconds=last)


def _spans(rows: Sequence[asyncpg.Record], start: datetime) -> list[tuple[datetime, datetime]]:
    """The (start, end) of imported candles that end after `start`."""
    spans = [(r["start_time"], next_bucket(r["start_time"], Interval(r["width_s"]))) for r in rows]
    return [(s, e) for s, e in spans if e > start]


def _summed(r: asyncpg.Record, start: datetime) -> Candle:
    """A candle of sums from _TRADED_BUCKETS or _IMPORTED_BUCKETS (PostgreSQL sums bigints as
    numeric)."""
    count = r["trade_count"]
    return Candle(start=start, open=r["open"], high=r["high"], low=r["low"], close=r["close"],
                  volume=int(r["volume"]), trade_count=None if count is None else int(count), pv=r["pv"])


def _candle(r: asyncpg.Record, start: datetime | None = None) -> Candle:
    return Candle(start=start or r["start_time"], open=r["open"], high=r["high"], low=r["low"], close=r["close"],
                  volume=r["volume"], trade_count=r["trade_count"], pv=r["pv"])


class CandleRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def record_trades(self, trades: Sequence[MarketData]) -> None:
        """Fold trades into the maintained candles; a trade recorded before adds nothing."""
        if not trades:
            return
        await self.conn.execute(
            _RECORD_TRADES, [t.symbol for t in trades], [t.sequence for t in trades], [t.time for t in trades],
            [t.trade_price for t in trades], [t.trade_quantity for t in trades], list(MAINTAINED))

    async def traded(self, symbol: str, width: int, start: datetime, stop: datetime) -> list[Part]:
        rows = await self.conn.fetch(
            "SELECT start_time, open, high, low, close, volume, trade_count, pv, first_at, last_at FROM quotes.candles "
            "WHERE symbol = $1 AND width_s = $2 AND start_time >= $3 AND start_time < $4 ORDER BY start_time",
            symbol, width, start, stop)
        return [Part(width, _candle(r), first_at=r["first_at"], last_at=r["last_at"]) for r in rows]

    async def imported(self, symbol: str, max_width: int, start: datetime,
                       stop: datetime) -> tuple[list[Part], list[tuple[datetime, datetime]]]:
        """The imported candles of width ≤ max_width starting in [start, stop), one by one, and
        the spans (start, end) of the wider ones that overlap it (one round trip). (GetCandles
        reads them summed up per bucket, see rolled_up; this is the model tests check it by.)"""
        rows = await self.conn.fetch(
            f"SELECT width_s, start_time, open, high, low, close, volume, trade_count, {_PV} AS pv "
            "FROM quotes.imported_candles WHERE symbol = $1 AND start_time < $4"
            f" AND (width_s <= $2 AND start_time >= $3 OR {_WIDER_AROUND}) ORDER BY start_time",
            symbol, max_width, start, stop)
        parts = [Part(r["width_s"], _candle(r), imported=True) for r in rows if r["width_s"] <= max_width]
        return parts, _spans([r for r in rows if r["width_s"] > max_width], start)

    async def rolled_up(self, symbol: str, width: int, max_width: int, starts: Sequence[datetime],
                        stop: datetime) -> tuple[list[Part], list[Part], list[tuple[datetime, datetime]]]:
        """The stored candles of the buckets `starts` (consecutive bucket starts, the last
        bucket ending at `stop`), summed up per bucket in PostgreSQL: per bucket one traded
        part (the traded rows `width` wide) and one imported part (the imported rows up to
        `max_width` wide that no coarser imported row covers), each starting at its bucket and
        carrying when its first and last rows open and close, so that domain.candles.rollup of
        them gives what it gives of the rows one by one (tests compare the two); rows already one
        per bucket (of the interval's own width) come back as they are. And the spans of the
        wider imported candles around [starts[0], stop), as `imported` gives them.
        Rolling 200,000 imported minutes up into days row by row in Python held quote_svc's
        event loop for seconds (round 27); here what comes back is a row or two per bucket."""
        starts, first = list(starts), starts[0]
        if width == max_width:  # the rows are the buckets already (1s, 1m, 1h)
            traded = await self.traded(symbol, width, first, stop)
        else:
            traded = [Part(width, _summed(r, starts[r["k"] - 1]), first_at=r["first_at"], last_at=r["last_at"])
                      for r in await self.conn.fetch(_TRADED_BUCKETS, symbol, width, starts, stop)]
        widths = await self.conn.fetchval(_WIDTHS_PRESENT, symbol, [w for w in IMPORTED_WIDTHS if w <= max_width],
                                          first, stop)
        if widths in ([], [max_width]):  # none, or the buckets already (one round trip with the spans)
            imported, spans = await self.imported(symbol, max_width, first, stop)
            return traded, imported, spans
        imported = [Part(max_width, _summed(r, starts[r["k"] - 1]), imported=True, first_at=r["first_at"],
                         last_at=r["last_at"])
                    for r in await self.conn.fetch(_imported_buckets(widths), symbol, starts, widths, stop)]
        wider = await self.conn.fetch(
            "SELECT width_s, start_time FROM quotes.imported_candles WHERE symbol = $1 AND start_time < $4"
            f" AND {_WIDER_AROUND} ORDER BY start_time", symbol, max_width, first, stop)
        return traded, imported, _spans(wider, first)

    async def fingerprints(self, symbol: str, width: int, max_width: int, start: datetime, mid: datetime,
                           stop: datetime, with_close: bool = False) -> tuple[Decimal | None, str, str]:
        """Summaries of the stored rows a query of `width` (imports up to `max_width`) reads in
        [start, mid) and in [start, stop), taken in one snapshot. Any write changes them:
        the candle writer only ever adds (a new row, or volume and trade count grow) and an
        import that changes a row changes its content hash."""
        coarse, whole_from, whole_to = _coarse_buckets(width, start, min(mid, stop))
        row = await self.conn.fetchrow(_FINGERPRINTS_AND_CLOSE if with_close else _FINGERPRINTS,
                                       symbol, width, max_width, start, mid, stop, max(mid, stop),
                                       coarse, whole_from, whole_to)
        return row["prev"] if with_close else None, row["old"], row["new"]

    async def first_start(self, symbol: str, max_width: int, start: datetime, stop: datetime) -> datetime | None:
        """The earliest candle start in [start, stop), traded or imported (of width ≤ max_width)."""
        return await self.conn.fetchval(
            "SELECT min(s) FROM ("
            " (SELECT start_time AS s FROM quotes.candles WHERE symbol = $1 AND width_s = 1"
            "  AND start_time >= $3 AND start_time < $4 ORDER BY start_time LIMIT 1)"
            " UNION ALL"
            " (SELECT start_time FROM quotes.imported_candles WHERE symbol = $1 AND width_s <= $2"
            "  AND start_time >= $3 AND start_time < $4 ORDER BY start_time LIMIT 1)) x",
            symbol, max_width, start, stop)

    async def close_before(self, symbol: str, before: datetime | None, max_width: int) -> Decimal | None:
        """The close of the last candle ending at or before `before` (None: the latest of all),
        traded or imported at a width ≤ max_width."""
        row = await self.conn.fetchrow(_CLOSE_BEFORE, symbol, before, max_width)
        return row["close"] if row else None

    async def upsert_imported(self, rows: Sequence[ImportedCandle]) -> tuple[int, int]:
        """Insert or overwrite imported candles; identical rows are left alone.
        Returns (inserted, updated)."""
        result = await self.conn.fetch(
            "INSERT INTO quotes.imported_candles AS c (symbol, width_s, start_time, open, high, low, close, volume,"
            " trade_count, vwap) "
            "SELECT * FROM unnest($1::text[], $2::int[], $3::timestamptz[], $4::numeric[], $5::numeric[],"
            " $6::numeric[], $7::numeric[], $8::bigint[], $9::bigint[], $10::numeric[]) "
            "ON CONFLICT (symbol, width_s, start_time) DO UPDATE SET open = excluded.open, high = excluded.high,"
            " low = excluded.low, close = excluded.close, volume = excluded.volume,"
            " trade_count = excluded.trade_count, vwap = excluded.vwap, imported_at = now() "
            "WHERE (c.open, c.high, c.low, c.close, c.volume, c.trade_count, c.vwap) IS DISTINCT FROM"
            " (excluded.open, excluded.high, excluded.low, excluded.close, excluded.volume, excluded.trade_count,"
            "  excluded.vwap) "
            "RETURNING (xmax = 0) AS inserted",
            [r.symbol for r in rows], [r.width for r in rows], [r.start for r in rows], [r.open for r in rows],
            [r.high for r in rows], [r.low for r in rows], [r.close for r in rows], [r.volume for r in rows],
            [r.trade_count for r in rows], [r.vwap for r in rows])
        inserted = sum(1 for r in result if r["inserted"])
        return inserted, len(result) - inserted
