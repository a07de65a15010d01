"""Candles: what quote_svc computes from the trades on the market-data stream equals what a
reference implementation (written here, from the definition) computes from the same list of
trades, for every interval, with empty intervals and range edges; pagination; CSV import."""
from __future__ import annotations

import asyncio
import random
import sys
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import grpc
import pytest

from meshkit import bus, paging
from meshkit.money import fmt
from meshkit.status import error_info
from quote_svc.adapters.feed import CANDLES_DURABLE
from quote_svc.entrypoints import mapping
from quote_svc.service_layer.candles import last_close
from stockmesh.quote.v1 import quote_pb2, quote_service_pb2 as qpb
from tests.support.quotes import md_event, publish_md, quote_service
from tests.support.wait import drained, eventually

pytestmark = pytest.mark.integration

UTC = timezone.utc
NY = ZoneInfo("America/New_York")
I = quote_pb2  # noqa: E741
WIDTH = {I.CANDLE_INTERVAL_1S: 1, I.CANDLE_INTERVAL_1M: 60, I.CANDLE_INTERVAL_5M: 300,
         I.CANDLE_INTERVAL_15M: 900, I.CANDLE_INTERVAL_1H: 3600, I.CANDLE_INTERVAL_1D: None}


# ------------------------------------------------------------------ the reference

@dataclass(frozen=True)
class Trade:
    at: datetime
    seq: int
    price: Decimal
    qty: int


def ref_bucket(t: datetime, interval: int) -> datetime:
    w = WIDTH[interval]
    if w is None:
        d = t.astimezone(NY).date()
        return datetime(d.year, d.month, d.day, tzinfo=NY).astimezone(UTC)
    s = int(t.timestamp())
    return datetime.fromtimestamp(s - s % w, tz=UTC)


def ref_next(b: datetime, interval: int) -> datetime:
    w = WIDTH[interval]
    if w is None:
        d = b.astimezone(NY).date() + timedelta(days=1)
        return datetime(d.year, d.month, d.day, tzinfo=NY).astimezone(UTC)
    return b + timedelta(seconds=w)


def reference(trades: list[Trade], interval: int, start: datetime, end: datetime, now: datetime) -> list[tuple]:
    """Every bucket overlapping [start, end) up to the one running now; a flat candle (no
    trades, OHLC = previous close) where nothing traded, none before the first trade ever, and
    no flat 1d candle on a Saturday or Sunday."""
    ordered = sorted(trades, key=lambda t: (t.at, t.seq))
    out = []
    b = ref_bucket(start, interval)
    before = [t for t in ordered if t.at < b]
    prev = before[-1].price if before else None
    while b < end and b <= now:
        nxt = ref_next(b, interval)
        inside = [t for t in ordered if b <= t.at < nxt]
        final = nxt <= now
        if inside:
            vol = sum(t.qty for t in inside)
            pv = sum(t.price * t.qty for t in inside)
            vwap = (pv / vol).quantize(Decimal("0.000001"), rounding=ROUND_HALF_EVEN)
            out.append((b, fmt(inside[0].price), fmt(max(t.price for t in inside)),
                        fmt(min(t.price for t in inside)), fmt(inside[-1].price), vol, len(inside), fmt(vwap), final))
            prev = inside[-1].price
        elif prev is not None and not (WIDTH[interval] is None and b.astimezone(NY).weekday() >= 5):
            p = fmt(prev)
            out.append((b, p, p, p, p, 0, 0, "", final))
        b = nxt
    return out


def as_tuples(candles) -> list[tuple]:
    return [(c.start_time.ToDatetime(tzinfo=UTC), c.open, c.high, c.low, c.close, c.volume, c.trade_count, c.vwap,
             c.is_final) for c in candles]


# ------------------------------------------------------------------ helpers

def ts(dt: datetime):
    from google.protobuf.timestamp_pb2 import Timestamp

    t = Timestamp()
    t.FromDatetime(dt)
    return t


async def all_pages(stub, symbol: str, interval: int, start: datetime, end: datetime, page_size: int = 0):
    got, token, pages = [], "", 0
    while True:
        resp = await stub.GetCandles(qpb.GetCandlesRequest(symbol=symbol, interval=interval, start_time=ts(start),
                                                           end_time=ts(end), page_size=page_size, page_token=token))
        got += resp.candles
        pages += 1
        token = resp.next_page_token
        if not token:
            return got, pages


def make_trades(seed: int) -> list[Trade]:
    """A few hours of busy trading with pauses on Monday 2024-03-04, then sparse trades on
    other days (a day with none, a Saturday with some, the DST change on Sunday 03-10, trades
    late in the New York evening that belong to the earlier trading day)."""
    rng = random.Random(seed)
    cents = 12_140
    out: list[Trade] = []
    seq = 0

    def add(at: datetime, n: int = 1) -> None:
        nonlocal cents, seq
        for _ in range(n):  # several trades of one engine input share its time
            cents = max(100, cents + rng.choice((-3, -1, 0, 1, 3)))
            seq += 1
            out.append(Trade(at, seq, Decimal(cents) / 100, rng.randint(1, 500)))

    t = datetime(2024, 3, 4, 14, 0, 0, 250_000, tzinfo=UTC)
    end = datetime(2024, 3, 4, 17, 0, tzinfo=UTC)
    while t < end:
        add(t, rng.choice((1, 1, 1, 2, 3)))
        gap = rng.expovariate(1 / 4.0)
        if rng.random() < 0.004:
            gap += rng.uniform(600, 1500)  # a pause: empty 1m, 5m, 15m candles
        t += timedelta(seconds=gap, microseconds=rng.randrange(1000))
    for at in (datetime(2024, 3, 5, 3, 30, tzinfo=UTC),   # 22:30 in New York: still Monday 03-04
               datetime(2024, 3, 5, 15, 0, tzinfo=UTC), datetime(2024, 3, 5, 15, 0, 1, tzinfo=UTC),
               datetime(2024, 3, 7, 16, 0, tzinfo=UTC),   # Wednesday 03-06 has none
               datetime(2024, 3, 9, 17, 0, tzinfo=UTC),   # a Saturday with a trade
               datetime(2024, 3, 11, 4, 30, tzinfo=UTC),  # 00:30 EDT Monday 03-11 (after the DST change)
               datetime(2024, 3, 12, 19, 59, 59, 999_000, tzinfo=UTC)):
        add(at, rng.choice((1, 2)))
    return out


async def publish_trades(js, ns: str, symbol: str, trades: list[Trade]) -> None:
    acks = []
    for t in trades:
        ev = md_event(symbol, t.seq, price=fmt(t.price), qty=t.qty, at=t.at)
        acks.append(publish_md(js, ns, ev))
        if len(acks) >= 200:
            await asyncio.gather(*acks)
            acks = []
    await asyncio.gather(*acks)


async def wait_recorded(pool, symbol: str, n: int) -> None:
    for _ in range(400):
        if await pool.fetchval("SELECT count(*) FROM quotes.trades WHERE symbol = $1", symbol) >= n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the candle writer did not record the trades")


@pytest.fixture
def ns() -> str:
    return f"tc{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------ tests

async def test_candles_equal_the_reference_for_every_interval(pool, nats_conn, nats_url, ns):
    symbol = "NVDA"
    js = nats_conn.jetstream()
    trades = make_trades(seed=7)
    async with quote_service(pool, nats_url, ns) as svc:
        await publish_trades(js, ns, symbol, trades)
        # Repeats change nothing: an engine replay of old events under new message ids, and
        # non-trade events (book changes) in between.
        for t in trades[100:150]:
            await js.publish(f"{ns}.md.{symbol}", md_event(symbol, t.seq, price=fmt(t.price), qty=t.qty,
                                                          at=t.at).SerializeToString(),
                             headers={"Nats-Msg-Id": f"replay-{t.seq}"})
        await publish_md(js, ns, md_event(symbol, len(trades) + 1, bid="120.00", ask="121.00",
                                          at=datetime(2024, 3, 12, 20, 0, tzinfo=UTC)))
        await wait_recorded(pool, symbol, len(trades))
        assert await drained(js, bus.stream_name(ns, "MD"), CANDLES_DURABLE)  # the replays were taken too

        now = datetime.now(UTC)
        day = datetime(2024, 3, 4, tzinfo=UTC)
        h = lambda hh, mm=0, ss=0, us=0: day.replace(hour=hh, minute=mm, second=ss, microsecond=us)  # noqa: E731
        ranges = {
            I.CANDLE_INTERVAL_1S: [(h(13, 59, 50), h(14, 10, 0, 300_000)),   # before the first trade ever
                                   (h(15, 30, 0, 500_000), h(15, 41, 7))],
            I.CANDLE_INTERVAL_1M: [(h(13, 50), h(17, 10, 30)), (h(16, 59, 59), h(18, 0))],
            I.CANDLE_INTERVAL_5M: [(h(13, 47, 13), h(18, 2, 11))],
            I.CANDLE_INTERVAL_15M: [(h(13, 47, 13), h(18, 2, 11)), (h(14, 7), h(14, 8))],
            I.CANDLE_INTERVAL_1H: [(h(12), h(23, 30)), (h(14, 30), datetime(2024, 3, 5, 16, tzinfo=UTC))],
            I.CANDLE_INTERVAL_1D: [(datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 14, tzinfo=UTC)),
                                   (datetime(2024, 3, 5, 12, tzinfo=UTC), datetime(2024, 3, 11, 3, tzinfo=UTC))],
        }
        checked = 0
        for interval, spans in ranges.items():
            for start, end in spans:
                got, _ = await all_pages(svc.stub, symbol, interval, start, end, page_size=5000)
                want = reference(trades, interval, start, end, now)
                assert as_tuples(got) == want, (quote_pb2.CandleInterval.Name(interval), start, end)
                checked += len(want)
                # Pages of 37: everything exactly once, in order.
                paged, pages = await all_pages(svc.stub, symbol, interval, start, end, page_size=37)
                assert as_tuples(paged) == want
                assert pages == max(1, -(-len(want) // 37))
        assert checked > 1500
        d1 = [c for c in as_tuples((await all_pages(svc.stub, symbol, I.CANDLE_INTERVAL_1D,
                                                     datetime(2024, 3, 1, tzinfo=UTC),
                                                     datetime(2024, 3, 14, tzinfo=UTC)))[0])]
        assert sum(c[5] for c in d1) == sum(t.qty for t in trades)
        assert [c[0].astimezone(NY).date().day for c in d1] == [4, 5, 6, 7, 8, 9, 11, 12, 13]

        # The candle still being built: is_final false; nothing after now.
        live = datetime.now(UTC)
        await publish_md(js, ns, md_event(symbol, len(trades) + 2, price="130.00", qty=7, at=live))
        await wait_recorded(pool, symbol, len(trades) + 1)
        resp = await svc.stub.GetCandles(qpb.GetCandlesRequest(
            symbol=symbol, interval=I.CANDLE_INTERVAL_1H, start_time=ts(live - timedelta(hours=3)),
            end_time=ts(live + timedelta(hours=3))))
        assert [c.is_final for c in resp.candles] == [True, True, True, False]
        assert resp.candles[-1].close == "130.00" and resp.candles[0].trade_count == 0
        assert await last_close(pool, symbol) == Decimal("130.00")


async def test_get_candles_validation(pool, nats_url, ns):
    async with quote_service(pool, nats_url, ns, candles_writer=False) as svc:
        t0 = datetime(2024, 3, 4, 14, tzinfo=UTC)
        good = dict(symbol="AAPL", interval=I.CANDLE_INTERVAL_1M, start_time=ts(t0), end_time=ts(t0 + timedelta(hours=1)))
        cases = [
            (dict(good, interval=I.CANDLE_INTERVAL_UNSPECIFIED), "interval", "INVALID_ARGUMENT"),
            (dict(good, end_time=ts(t0)), "end_time", "INVALID_ARGUMENT"),
            (dict(good, symbol="NOPE"), "symbol", "UNKNOWN_SYMBOL"),
            (dict(good, page_size=-1), "page_size", "INVALID_ARGUMENT"),
            (dict(good, page_token="garbage"), "page_token", "INVALID_ARGUMENT"),
            # Our encoding and this query's key, a time no page ever ended at: refused, not a crash.
            (dict(good, page_token=paging.encode_token({"at": 99999999999999}, scope=mapping.query_key(
                "AAPL", I.CANDLE_INTERVAL_1M, ts(t0), ts(t0 + timedelta(hours=1))))), "page_token", "INVALID_ARGUMENT"),
        ]
        for req, field, reason in cases:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await svc.stub.GetCandles(qpb.GetCandlesRequest(**req))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
            info, bad = error_info(err.value)
            assert info.reason == reason and field in [v.field for v in bad.field_violations]
        # A symbol without any data: an empty page, no token, no error.
        empty = await svc.stub.GetCandles(qpb.GetCandlesRequest(**dict(good, symbol="SIRI")))
        assert not empty.candles and not empty.next_page_token


def raw_ts(seconds: int, nanos: int = 0):
    """A Timestamp as a client may send it, valid or not."""
    from google.protobuf.timestamp_pb2 import Timestamp

    return Timestamp(seconds=seconds, nanos=nanos)


TS_FIRST, TS_LAST = -62_135_596_800, 253_402_300_799  # 0001-01-01T00:00:00Z, 9999-12-31T23:59:59Z
# What a 1d query may name: a 1d candle is a New York day, and the Timestamp range's first and
# last UTC hours fall on New York days whose start or end Python's datetime cannot hold.
DAY_FIRST, DAY_LAST = datetime(1, 1, 2, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC)


async def test_get_candles_times_out_of_range_are_invalid_and_the_edges_answer(pool, nats_conn, nats_url, ns, caplog):
    """Timestamps outside what the service can bucket are INVALID_ARGUMENT naming the field and
    the bound (they crashed the RPC: INTERNAL); the bounds themselves, ranges wholly in the
    future and a forged page token at the edges answer without a crash."""
    symbol = "JPM"  # no other candle test uses it
    t0 = datetime(2024, 1, 2, 15, tzinfo=UTC)
    trades = [Trade(t0 + timedelta(minutes=k), k + 1, Decimal("170.00") + k, 5) for k in range(3)]
    async with quote_service(pool, nats_url, ns) as svc:
        await publish_trades(nats_conn.jetstream(), ns, symbol, trades)
        await wait_recorded(pool, symbol, len(trades))

        good = dict(symbol=symbol, interval=I.CANDLE_INTERVAL_1M, start_time=ts(t0),
                    end_time=ts(t0 + timedelta(hours=1)))
        d1 = I.CANDLE_INTERVAL_1D
        cases = [
            (dict(good, start_time=raw_ts(good["start_time"].seconds, -5)), "start_time", "999,999,999"),
            (dict(good, end_time=raw_ts(good["end_time"].seconds, 1_000_000_000)), "end_time", "999,999,999"),
            (dict(good, start_time=raw_ts(TS_FIRST - 100)), "start_time", "0001-01-01T00:00:00Z"),
            (dict(good, end_time=raw_ts(TS_LAST + 1)), "end_time", "9999-12-31T23:59:59.999999999Z"),
            (dict(good, start_time=raw_ts(TS_FIRST - 100), end_time=raw_ts(TS_LAST + 1)), "end_time", "9999-12-31"),
            (dict(good, interval=d1, start_time=raw_ts(TS_FIRST)), "start_time", "0001-01-02T00:00:00Z"),
            (dict(good, interval=d1, start_time=ts(datetime(1, 1, 1, 23, tzinfo=UTC))), "start_time", "0001-01-02"),
            (dict(good, interval=d1, end_time=ts(datetime(9999, 12, 31, 12, tzinfo=UTC))), "end_time",
             "9999-12-31T00:00:00Z"),
            (dict(good, interval=d1, end_time=raw_ts(TS_LAST, 999_999_999)), "end_time", "9999-12-31T00:00:00Z"),
        ]
        for req, field, bound in cases:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await svc.stub.GetCandles(qpb.GetCandlesRequest(**req))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (req, err.value.details())
            info, bad = error_info(err.value)
            named = {v.field: v.description for v in bad.field_violations}
            assert info.reason == "INVALID_ARGUMENT" and field in named, (req, named)
            assert bound in named[field], (req, named)

        # The edges answer: from the first instant to the last each interval allows, a page
        # that starts with the symbol's first candle, and the page after it.
        for interval in WIDTH:
            first, last = (DAY_FIRST, DAY_LAST) if interval == d1 else (None, None)
            start = ts(first) if first else raw_ts(TS_FIRST)
            end = ts(last) if last else raw_ts(TS_LAST, 999_999_999)
            req = qpb.GetCandlesRequest(symbol=symbol, interval=interval, start_time=start, end_time=end, page_size=1)
            page = await svc.stub.GetCandles(req)
            assert [c.start_time.ToDatetime(tzinfo=UTC) for c in page.candles] == [ref_bucket(t0, interval)]
            req.page_token = page.next_page_token
            assert (await svc.stub.GetCandles(req)).candles
            # A range wholly in the future, up to the last instant: no candles yet.
            late = qpb.GetCandlesRequest(symbol=symbol, interval=interval, end_time=end,
                                         start_time=ts((last or datetime.max.replace(tzinfo=UTC)) - timedelta(hours=2)))
            assert not (await svc.stub.GetCandles(late)).candles
            # A page token naming a bucket outside the query's range (our encoding and the
            # query's key, as anyone can make them) is refused, not followed off the calendar.
            before = int((late.start_time.ToDatetime(tzinfo=UTC) - timedelta(days=3)).timestamp())
            for at in (TS_FIRST, before, TS_LAST + 1) + ((TS_LAST,) if interval == d1 else ()):
                forged = paging.encode_token({"at": at}, scope=mapping.query_key(
                    symbol, interval, late.start_time, late.end_time))
                late.page_token = forged
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await svc.stub.GetCandles(late)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "page_token" in [v.field for v in error_info(err.value)[1].field_violations]

        # Nanoseconds count: a bucket overlapping the range by one is in it (round 12: the end
        # was cut to the microsecond and t0+2m's bucket left out), and an empty range is refused.
        def at_ns(t: datetime, nanos: int):
            return raw_ts(int(t.timestamp()) + nanos // 1_000_000_000, nanos % 1_000_000_000)
        edges = qpb.GetCandlesRequest(symbol=symbol, interval=I.CANDLE_INTERVAL_1M,
                                      start_time=at_ns(t0, 60 * 10**9 - 1), end_time=at_ns(t0, 120 * 10**9 + 1))
        got = [c.start_time.ToDatetime(tzinfo=UTC) for c in (await svc.stub.GetCandles(edges)).candles]
        assert got == [t0, t0 + timedelta(minutes=1), t0 + timedelta(minutes=2)]
        edges.end_time.CopyFrom(edges.start_time)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await svc.stub.GetCandles(edges)
        assert "end_time" in [v.field for v in error_info(err.value)[1].field_violations]
    assert not [r for r in caplog.records if r.getMessage() == "rpc crashed"]


# ------------------------------------------------------------------ CSV import

HEADER = "symbol,start_time,interval,open,high,low,close,volume,trade_count,vwap\n"


def history_rows(symbol: str) -> list[tuple]:
    """An hour of 1m candles, 14:30-15:30 UTC on 2024-02-05, as (start, o, h, l, c, v, n, vwap)."""
    rng = random.Random(3)
    rows, price = [], Decimal("113.60")
    for i in range(60):
        start = datetime(2024, 2, 5, 14, 30, tzinfo=UTC) + timedelta(minutes=i)
        o = price
        c = max(Decimal("1.00"), o + Decimal(rng.randint(-20, 20)) / 100)
        hi, lo = max(o, c) + Decimal(rng.randint(0, 5)) / 100, min(o, c) - Decimal(rng.randint(0, 5)) / 100
        v, n = rng.randint(100, 5000), rng.randint(1, 40)
        vwap = ((o + c + hi + lo) / 4).quantize(Decimal("0.0001"))
        rows.append((start, o, hi, lo, c, v, n, vwap))
        price = c
    return rows


def write_csv(path: Path, symbol: str, rows, bad_line: int | None = None) -> Path:
    lines = [HEADER]
    for start, o, hi, lo, c, v, n, vwap in rows:
        lines.append(f"{symbol},{start.isoformat().replace('+00:00', 'Z')},1m,{o},{hi},{lo},{c},{v},{n},{vwap}\n")
    lines.append(f"{symbol},2024-02-05,1d,113.00,115.00,112.00,114.00,900000,,\n")  # a trading day
    if bad_line is not None:
        lines[bad_line - 1] = f"{symbol},2024-02-05T16:00:00Z,1m,10.00,9.00,11.00,10.00,5,1,\n"  # high < low
    path.write_text("".join(lines))
    return path


async def stockmesh(*args: str, database_url: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshkit.cli", *args, "--database-url", database_url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode, out.decode(), err.decode()


async def imported(pool, symbol: str) -> list:
    return [tuple(r) for r in await pool.fetch(
        "SELECT * FROM quotes.imported_candles WHERE symbol = $1 ORDER BY width_s, start_time", symbol)]


async def test_csv_import_good_bad_and_twice(pool, database_url, nats_url, ns, tmp_path):
    symbol = "XOM"
    rows = history_rows(symbol)

    bad = write_csv(tmp_path / "bad.csv", symbol, rows, bad_line=17)
    code, out, err = await stockmesh("candles", "import", str(bad), database_url=database_url)
    assert code == 1 and "line 17" in err and "nothing imported" in err, err
    assert await imported(pool, symbol) == []

    good = write_csv(tmp_path / "good.csv", symbol, rows)
    code, out, err = await stockmesh("candles", "import", str(good), database_url=database_url)
    assert code == 0, err
    assert "61 candles: 61 new, 0 changed, 0 unchanged" in out
    first = await imported(pool, symbol)
    assert len(first) == 61

    code, out, err = await stockmesh("candles", "import", str(good), database_url=database_url)
    assert code == 0 and "61 candles: 0 new, 0 changed, 61 unchanged" in out, out + err
    assert await imported(pool, symbol) == first

    # Served by GetCandles, rolled up like traded candles.
    async with quote_service(pool, nats_url, ns, candles_writer=False) as svc:
        start, end = datetime(2024, 2, 5, 14, 30, tzinfo=UTC), datetime(2024, 2, 5, 15, 30, tzinfo=UTC)
        one_min, _ = await all_pages(svc.stub, symbol, I.CANDLE_INTERVAL_1M, start, end)
        assert [(c.open, c.close, c.volume, c.trade_count, c.vwap) for c in one_min] == \
            [(fmt(o), fmt(c), v, n, fmt(vw)) for _, o, _, _, c, v, n, vw in rows]
        five, _ = await all_pages(svc.stub, symbol, I.CANDLE_INTERVAL_5M, start, end)
        assert len(five) == 12
        for k, c5 in enumerate(five):
            part = rows[k * 5:(k + 1) * 5]
            vol = sum(r[5] for r in part)
            vwap = (sum(r[7] * r[5] for r in part) / vol).quantize(Decimal("0.000001"), rounding=ROUND_HALF_EVEN)
            assert (c5.open, c5.high, c5.low, c5.close, c5.volume, c5.trade_count, c5.vwap) == (
                fmt(part[0][1]), fmt(max(r[2] for r in part)), fmt(min(r[3] for r in part)), fmt(part[-1][4]),
                vol, sum(r[6] for r in part), fmt(vwap))
        hour, _ = await all_pages(svc.stub, symbol, I.CANDLE_INTERVAL_1H, start - timedelta(minutes=30), end)
        # 14:00-15:00 holds 30 of the minutes, 15:00-16:00 the other 30; the flat hours after
        # the import carry the last close.
        assert [c.volume for c in hour] == [sum(r[5] for r in rows[:30]), sum(r[5] for r in rows[30:])]
        day, _ = await all_pages(svc.stub, symbol, I.CANDLE_INTERVAL_1D, datetime(2024, 2, 5, 12, tzinfo=UTC),
                                 datetime(2024, 2, 7, tzinfo=UTC))
        # The imported 1d candle wins over the 1m ones inside it (the coarsest width present
        # in a bucket is used), then a flat day.
        assert [(c.open, c.close, c.volume, c.trade_count, c.vwap) for c in day] == [
            ("113.00", "114.00", 900000, 0, ""), ("114.00", "114.00", 0, 0, "")]
    assert await last_close(pool, symbol) == Decimal("114.00")


# ------------------------------------------------------------------ the cache of final candles

async def test_cached_candles_see_a_late_trade_and_an_import(pool, nats_conn, nats_url, database_url, ns, tmp_path):
    """GetCandles keeps the final candles of a reply; a trade arriving late into a cached
    bucket, and a CSV import into a cached bucket (another process), both show at once."""
    from quote_svc.domain.candles import Interval

    symbol = "KO"
    js = nats_conn.jetstream()
    base = datetime(2023, 6, 7, 14, 0, tzinfo=UTC)
    trades = [Trade(base + timedelta(seconds=37 * k, microseconds=1000), k + 1, Decimal("50.00") + Decimal(k % 7) / 100,
                    10 + k) for k in range(40)]
    start, end = base - timedelta(minutes=5), base + timedelta(hours=1)

    async with quote_service(pool, nats_url, ns) as svc:
        cache = svc.parts.candle_cache
        key = (symbol, Interval.M1, start)  # the first bucket of the page

        async def check(expected: list[Trade]) -> list:
            got, _ = await all_pages(svc.stub, symbol, I.CANDLE_INTERVAL_1M, start, end, page_size=5000)
            assert as_tuples(got) == reference(expected, I.CANDLE_INTERVAL_1M, start, end, datetime.now(UTC))
            return got

        await publish_trades(js, ns, symbol, trades)
        await wait_recorded(pool, symbol, len(trades))
        await check(trades)
        run = cache.get(key)
        assert run is not None and len(run.candles) == 60
        await check(trades)
        assert cache.get(key) is run  # served from the cache, nothing rebuilt

        # Late trades: one into a minute that had trades, one into a flat minute (which also
        # changes the flat candles after it).
        late = [Trade(base + timedelta(minutes=10, seconds=5), 41, Decimal("51.11"), 3),
                Trade(base + timedelta(minutes=40, seconds=30), 42, Decimal("49.50"), 8)]
        await publish_trades(js, ns, symbol, late)
        await wait_recorded(pool, symbol, len(trades) + len(late))
        await check(trades + late)
        assert cache.get(key) is not run
        run = cache.get(key)

        # An import into a cached (flat) minute, by `stockmesh candles import`.
        at = base + timedelta(minutes=50)
        csv_file = tmp_path / "ko.csv"
        csv_file.write_text(HEADER + f"{symbol},{at.isoformat().replace('+00:00', 'Z')},1m,"
                                     "49.60,49.90,49.40,49.80,1000,12,49.7000\n")
        code, out, err = await stockmesh("candles", "import", str(csv_file), database_url=database_url)
        assert code == 0, err
        got, _ = await all_pages(svc.stub, symbol, I.CANDLE_INTERVAL_1M, start, end, page_size=5000)
        assert cache.get(key) is not run
        want = reference(trades + late, I.CANDLE_INTERVAL_1M, start, end, datetime.now(UTC))
        k = next(i for i, c in enumerate(want) if c[0] == at)
        assert as_tuples(got)[:k] == want[:k]
        assert (got[k].open, got[k].high, got[k].low, got[k].close, got[k].volume, got[k].trade_count, got[k].vwap) \
            == ("49.60", "49.90", "49.40", "49.80", 1000, 12, "49.70")
        assert all((c.open, c.close, c.volume) == ("49.80", "49.80", 0) for c in got[k + 1:])

        # Paged, through the cache: the same candles once each.
        paged, pages = await all_pages(svc.stub, symbol, I.CANDLE_INTERVAL_1M, start, end, page_size=7)
        assert as_tuples(paged) == as_tuples(got) and pages == -(-len(got) // 7)


# ------------------------------------------------------------------ imported history and ranges

@pytest.fixture
def fresh_symbol(monkeypatch, tmp_path) -> str:
    """A listed symbol no other test has candles of (tick 0.01): the listing plus one, for this
    test's server and the `stockmesh candles import` it runs."""
    from meshkit import symbols

    name = f"T{uuid.uuid4().hex[:6].upper()}"
    listing = tmp_path / "symbols.csv"
    listing.write_text(Path(symbols.DEFAULT_FILE).read_text() + f"{name},Test {name},62.15\n")
    monkeypatch.setenv("STOCKMESH_SYMBOLS_FILE", str(listing))
    return name


async def import_lines(tmp_path: Path, database_url: str, *lines: str) -> None:
    path = tmp_path / f"{uuid.uuid4().hex[:6]}.csv"
    path.write_text(HEADER + "".join(line + "\n" for line in lines))
    code, out, err = await stockmesh("candles", "import", str(path), database_url=database_url)
    assert code == 0, err


def overlapping(candles, interval: int, start: datetime, end: datetime) -> list[tuple]:
    """The candles of buckets overlapping [start, end)."""
    return [c for c in as_tuples(candles) if c[0] < end and ref_next(c[0], interval) > start]


async def test_a_bucket_is_the_same_whatever_range_is_asked(pool, database_url, nats_url, ns, tmp_path,
                                                            fresh_symbol):
    """Imported daily candles are not data of 1s-1h candles, neither candles nor a close to fill
    their gaps from: the 1m candles from the beginning of time started at the first 1m row, but a
    range starting between the daily rows and it got flat candles at the daily close."""
    sym = fresh_symbol
    await import_lines(
        tmp_path, database_url,
        f"{sym},2026-11-02,1d,60.00,60.50,59.50,60.00,1000,,",
        *(f"{sym},2026-{day},1d,60.00,61.50,59.50,61.00,1000,," for day in ("11-30", "12-01", "12-02", "12-03")),
        *(f"{sym},2026-12-04T14:3{m}:00Z,1m,61.{m}0,61.{m}0,61.{m}0,61.{m}0,10,2," for m in range(4)))
    the_start = raw_ts(TS_FIRST)
    async with quote_service(pool, nats_url, ns, candles_writer=False) as svc:
        for interval, end in ((I.CANDLE_INTERVAL_1M, datetime(2026, 12, 4, 16, tzinfo=UTC)),
                              (I.CANDLE_INTERVAL_1H, datetime(2026, 12, 4, 18, tzinfo=UTC)),
                              (I.CANDLE_INTERVAL_1S, datetime(2026, 12, 4, 14, 32, tzinfo=UTC))):
            req = qpb.GetCandlesRequest(symbol=sym, interval=interval, start_time=the_start, end_time=ts(end),
                                        page_size=5000)
            everything = (await svc.stub.GetCandles(req)).candles
            for start, stop in ((datetime(2026, 12, 4, tzinfo=UTC), datetime(2026, 12, 4, 0, 3, tzinfo=UTC)),
                                (datetime(2026, 11, 2, 6, tzinfo=UTC), end),
                                (datetime(2026, 12, 1, 12, tzinfo=UTC), end),
                                (datetime(2026, 12, 4, 14, 31, 30, tzinfo=UTC), end)):
                got, _ = await all_pages(svc.stub, sym, interval, start, stop, page_size=50)
                assert as_tuples(got) == overlapping(everything, interval, start, stop), (interval, start)
            first = as_tuples(everything[:1])
            if interval == I.CANDLE_INTERVAL_1S:  # 1m rows are not 1s data either
                assert first == []
            else:
                assert first[0][:7] == (ref_bucket(datetime(2026, 12, 4, 14, 30, tzinfo=UTC), interval), "61.00",
                                        "61.30" if interval == I.CANDLE_INTERVAL_1H else "61.00", "61.00",
                                        "61.30" if interval == I.CANDLE_INTERVAL_1H else "61.00",
                                        40 if interval == I.CANDLE_INTERVAL_1H else 10,
                                        8 if interval == I.CANDLE_INTERVAL_1H else 2)
        # The daily candles still come from the daily rows.
        days, _ = await all_pages(svc.stub, sym, I.CANDLE_INTERVAL_1D, datetime(2026, 11, 30, 12, tzinfo=UTC),
                                  datetime(2026, 12, 4, 12, tzinfo=UTC))
        assert [(c.close, c.volume) for c in days] == [("61.00", 1000)] * 4 + [("61.30", 40)]


async def traded_then_imported(nats_conn, pool, ns: str, sym: str, tmp_path: Path, database_url: str) -> None:
    """Trades at 04:50:07, 04:51:07, 04:52:07 and 04:53:07 on 2026-12-03 (117.55, 117.65,
    117.75, 117.85; 2 shares each), then a 1m candle of 10 trades imported at 04:52."""
    t0 = datetime(2026, 12, 3, 4, 50, 7, tzinfo=UTC)
    trades = [Trade(t0 + timedelta(minutes=k), k + 1, Decimal("117.55") + Decimal(k) / 10, 2) for k in range(4)]
    await publish_trades(nats_conn.jetstream(), ns, sym, trades)
    await wait_recorded(pool, sym, len(trades))
    await import_lines(tmp_path, database_url, f"{sym},2026-12-03T04:52:00Z,1m,117.00,117.90,117.00,117.20,100,10,")


async def test_the_bucket_of_a_symbols_first_trade_is_in_a_range_that_ends_before_that_trade(
        pool, nats_conn, nats_url, ns, fresh_symbol):
    """Acceptance round 16: a range ending inside the bucket of the symbol's first trade, before
    the trade itself ([04:50:00, 04:50:01) for a trade at 04:50:07), came back empty, although
    the bucket overlaps it (market-data.md: every bucket that overlaps the range) and the same
    request answered from the cache had it."""
    sym = fresh_symbol
    async with quote_service(pool, nats_url, ns) as svc:
        t0 = datetime(2026, 12, 3, 4, 50, 7, tzinfo=UTC)
        await publish_trades(nats_conn.jetstream(), ns, sym, [Trade(t0, 1, Decimal("117.55"), 2)])
        await wait_recorded(pool, sym, 1)
        minute = datetime(2026, 12, 3, 4, 50, tzinfo=UTC)
        for interval, start in ((I.CANDLE_INTERVAL_1M, minute), (I.CANDLE_INTERVAL_5M, minute),
                                (I.CANDLE_INTERVAL_1H, minute.replace(minute=0)),
                                (I.CANDLE_INTERVAL_1D, datetime(2026, 12, 3, 5, tzinfo=UTC) - timedelta(days=1))):
            for _ in range(2):  # answered from the database, then from the cache: the same
                got, _ = await all_pages(svc.stub, sym, interval, start, start + timedelta(seconds=1))
                assert [(c.start_time.ToDatetime(tzinfo=UTC), c.open, c.volume) for c in got] == [
                    (start, "117.55", 2)], (interval, got)


async def test_imported_and_traded_candles_of_a_bucket_in_the_order_of_their_times(
        pool, nats_conn, nats_url, database_url, ns, tmp_path, fresh_symbol):
    """A 1m row imported at 04:52 into a 5m bucket traded from 04:50 on is not its open (it
    was: imported candles were taken as earlier than the whole bucket's trades). It closes at
    its end, 04:53, after the trade at 04:52:07 (round 18: it closed at its start, while the
    close before a later range took it at its end)."""
    sym = fresh_symbol
    async with quote_service(pool, nats_url, ns) as svc:
        await traded_then_imported(nats_conn, pool, ns, sym, tmp_path, database_url)
        start, end = datetime(2026, 12, 3, 4, 50, tzinfo=UTC), datetime(2026, 12, 3, 4, 55, tzinfo=UTC)
        five, _ = await all_pages(svc.stub, sym, I.CANDLE_INTERVAL_5M, start, end)
        assert [(c.open, c.high, c.low, c.close, c.volume, c.trade_count) for c in five] == [
            ("117.55", "117.90", "117.00", "117.85", 108, 14)]
        ones, _ = await all_pages(svc.stub, sym, I.CANDLE_INTERVAL_1M, start, end)
        assert [(c.open, c.close) for c in ones] == [
            ("117.55", "117.55"), ("117.65", "117.65"), ("117.00", "117.20"), ("117.85", "117.85"),
            ("117.85", "117.85")]


async def test_a_flat_candle_after_imported_and_traded_ones_is_the_same_wherever_the_range_starts(
        pool, nats_conn, nats_url, database_url, ns, tmp_path, fresh_symbol):
    """Round 18 review: a minute imported (closing at 117.30) around a trade (04:53:07 at
    117.85) closed at the trade, but a range or page starting after it took the imported close
    as the previous one, so the flat candles after it were at 117.85 or 117.30 by where the
    range or page began."""
    sym = fresh_symbol
    async with quote_service(pool, nats_url, ns) as svc:
        await traded_then_imported(nats_conn, pool, ns, sym, tmp_path, database_url)
        await import_lines(tmp_path, database_url, f"{sym},2026-12-03T04:53:00Z,1m,117.10,117.40,117.10,117.30,50,5,")
        m = lambda mm: datetime(2026, 12, 3, 4, mm, tzinfo=UTC)  # noqa: E731
        whole, _ = await all_pages(svc.stub, sym, I.CANDLE_INTERVAL_1M, m(53), m(57))
        assert [(c.open, c.close, c.volume) for c in whole] == [
            ("117.10", "117.30", 52), ("117.30", "117.30", 0), ("117.30", "117.30", 0), ("117.30", "117.30", 0)]
        later, _ = await all_pages(svc.stub, sym, I.CANDLE_INTERVAL_1M, m(54), m(57))
        assert as_tuples(later) == as_tuples(whole[1:])
        paged, _ = await all_pages(svc.stub, sym, I.CANDLE_INTERVAL_1M, m(53), m(57), page_size=1)
        assert as_tuples(paged) == as_tuples(whole)


async def test_csv_rows_the_database_or_the_calendar_would_refuse_are_named_by_line(pool, database_url, tmp_path,
                                                                                    fresh_symbol):
    """Refused by the row checks with the usual message, nothing imported; a volume beyond a
    bigint crashed the import with asyncpg's DataError (exit 1, a traceback), a binary file was
    'line 0'."""
    sym = fresh_symbol
    good = f"{sym},2026-11-02,1d,60.00,61.00,59.00,60.00,1"
    for bad, words in [(f"{sym},2026-11-03,1d,60.00,61.00,59.00,60.00,99999999999999999999999",
                        "line 3: volume must be at most 1,000,000,000,000"),
                       (f"{sym},2026-11-03,1d,60.005,61,59,60,1", "line 3: open must be a multiple of the tick size"),
                       (f"{sym},2026-11-01,1d,60.00,61.00,59.00,60.00,1", "line 3: 2026-11-01 is a Sunday"),
                       (f"{sym},2030-01-02,1d,60.00,61.00,59.00,60.00,1", "line 3: the 1d candle from 2030-01-02"),
                       (f"{sym},2026-11-03,1d,6E1,61.00,59.00,60.00,1", "line 3: open must be a plain decimal"),
                       (f"{sym},2026-11-03,1d,60.00,61.00,59.00,60.00,0,5,60.00", "line 3: trade_count is 5")]:
        path = tmp_path / "bad.csv"
        path.write_text(HEADER + good + "\n" + bad + "\n")
        code, out, err = await stockmesh("candles", "import", str(path), database_url=database_url)
        assert code == 1 and words in err and "nothing imported" in err and "Traceback" not in err, err
    binary = tmp_path / "bad.csv"
    binary.write_bytes(b"\x1f\x8b\x08\x00\xff\xfe binary")
    code, out, err = await stockmesh("candles", "import", str(binary), database_url=database_url)
    assert code == 1 and "line 1: not UTF-8 text" in err, err
    assert await imported(pool, sym) == []


async def test_finer_buckets_inside_an_imported_candle_have_no_data_not_no_trades(
        pool, nats_conn, nats_url, database_url, ns, tmp_path, fresh_symbol):
    """1s candles inside an imported 1m candle of 10 trades were flat with trade_count 0: the
    history says there were trades in that minute, only not in which seconds. Such buckets
    are left out (a traded second among them is shown); an import is seen by a cached page."""
    sym = fresh_symbol
    async with quote_service(pool, nats_url, ns) as svc:
        await traded_then_imported(nats_conn, pool, ns, sym, tmp_path, database_url)
        s = lambda mm, ss: datetime(2026, 12, 3, 4, mm, ss, tzinfo=UTC)  # noqa: E731
        got, _ = await all_pages(svc.stub, sym, I.CANDLE_INTERVAL_1S, s(51, 58), s(53, 2), page_size=5000)
        assert [(c[0], c[1], c[6]) for c in as_tuples(got)] == [
            (s(51, 58), "117.65", 0), (s(51, 59), "117.65", 0),
            (s(52, 7), "117.75", 1),  # traded: shown; the other seconds of 04:52 are left out
            (s(53, 0), "117.75", 0), (s(53, 1), "117.75", 0)]
        # The same page again (cached), after a 15m row is imported around it: its flat
        # seconds are left out too.
        later = (s(54, 0), s(54, 3))
        assert len((await all_pages(svc.stub, sym, I.CANDLE_INTERVAL_1S, *later))[0]) == 3
        await import_lines(tmp_path, database_url, f"{sym},2026-12-03T04:45:00Z,15m,117.00,118.00,117.00,117.50,500,,")
        assert (await all_pages(svc.stub, sym, I.CANDLE_INTERVAL_1S, *later))[0] == []
        # 1m and 5m candles are within the 15m one too: only those with data of their own.
        ones, _ = await all_pages(svc.stub, sym, I.CANDLE_INTERVAL_1M, s(49, 0), s(56, 0))
        assert [c[0] for c in as_tuples(ones)] == [s(50, 0), s(51, 0), s(52, 0), s(53, 0)]
        # At its own width and above, the imported candle is data like any other.
        fifteen, _ = await all_pages(svc.stub, sym, I.CANDLE_INTERVAL_15M, s(45, 0), s(59, 0))
        assert [(c.open, c.volume) for c in fifteen] == [("117.00", 500 + 8)]  # the 15m row, not the 1m row in it


async def test_trades_that_come_close_together_are_written_in_one_batch(nats_conn, ns):
    """Round 26: in a busy session the candle writer's trades came one or two at a time, a
    transaction each, in each replica. What comes within the writer's linger of a trade is
    handed to it with that trade: 20 trades published one after the other (each stored before
    the next is sent), one batch or two, all of them, each once."""
    from quote_svc.adapters import feed

    js = nats_conn.jetstream()
    await bus.ensure_stream(js, ns, "md")
    batches: list[list[int]] = []

    async def handle(events) -> None:
        batches.append([e.sequence for e in events])

    writer = asyncio.create_task(feed.consume_trades(js, ns, handle, linger=1.0))  # (0: 20 batches)
    try:
        for seq in range(1, 21):
            await publish_md(js, ns, md_event("KO", seq, price="62.15", qty=1, volume=seq))
        await eventually(lambda: sum(map(len, batches)) >= 20, timeout=10)
        assert sorted(s for b in batches for s in b) == list(range(1, 21))
        assert len(batches) <= 3, f"20 trades in {len(batches)} batches: {batches}"
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)


# ------------------------------------------------------------------ summed up in PostgreSQL

def random_history(rng: random.Random, sym: str) -> tuple[list[tuple], list[tuple]]:
    """Traded rows (1s, 1m, 1h) and imported rows (all widths) of a symbol around the end of
    daylight saving time (Sunday 2026-11-01, a 25-hour New York day): imported rows nested in
    coarser ones, beside them and alone; without volume, trade count or vwap; traded rows
    beside and inside imported ones."""
    from quote_svc.domain.candles import Interval, bucket_start

    t0, span = datetime(2026, 10, 30, 12, tzinfo=UTC), 4 * 86400
    tick = Decimal("0.01")

    def ohlc():
        lo = Decimal(rng.randint(5000, 6000)) * tick
        hi = lo + rng.randint(0, 300) * tick
        return [lo + rng.randint(0, int((hi - lo) / tick)) * tick for _ in range(2)], hi, lo

    traded: dict[tuple, tuple] = {}
    imported: dict[tuple, tuple] = {}
    for _ in range(rng.randint(20, 120)):
        at = t0 + timedelta(seconds=rng.randrange(span), microseconds=rng.randrange(10 ** 6))
        for width in (1, 60, 3600):
            start = bucket_start(at, Interval(width))
            first = start + timedelta(microseconds=rng.randrange(width * 10 ** 6))
            last = first + timedelta(microseconds=rng.randrange(int((start + timedelta(seconds=width) - first)
                                                                    / timedelta(microseconds=1))))
            (o, c), hi, lo = ohlc()
            vol = rng.randint(1, 500)
            traded[(width, start)] = (sym, width, start, o, hi, lo, c, vol, rng.randint(1, vol),
                                      ((hi + lo) / 2) * vol, first, 1, last, 2)
    for _ in range(rng.randint(20, 120)):
        # A chain of nested widths around one instant, some left out.
        at = t0 + timedelta(seconds=rng.randrange(span))
        for width in (1, 60, 300, 900, 3600, 86400):
            if rng.random() < 0.5:
                continue
            start = bucket_start(at + timedelta(seconds=rng.choice((0, 0, width, -width))), Interval(width))
            (o, c), hi, lo = ohlc()
            vol = rng.choice((0, rng.randint(1, 10 ** 6)))
            vwap = None if vol == 0 or rng.random() < 0.1 else lo + (hi - lo) * rng.randint(0, 100) / 100
            count = None if rng.random() < 0.1 else (0 if vol == 0 else rng.randint(1, vol))
            imported[(width, start)] = (sym, width, start, o, hi, lo, c, vol, count, vwap)
    return list(traded.values()), list(imported.values())


@pytest.mark.parametrize("seed", range(6))
async def test_candles_summed_up_in_postgresql_equal_the_rollup_of_the_rows_one_by_one(pool, seed):
    """Round 27: GetCandles rolled every stored row of a range up in Python on the event loop (a
    day's candles over 200,000 imported minutes held it, and every live quote stream, for
    seconds). The rows are now summed up per bucket in PostgreSQL; the candles are the same as
    domain.candles.rollup of the rows one by one (the model), for every interval, mixed traded
    and imported history, a 25-hour day, rows covered by coarser imported ones, unknown sums."""
    from quote_svc.adapters.repository import CandleRepository
    from quote_svc.domain.candles import Coverage, Interval, advance, bucket_start, rollup
    from quote_svc.service_layer.candles import SOURCE_WIDTH, CandleQuery, _load

    rng = random.Random(seed)
    sym = f"R{uuid.uuid4().hex[:7].upper()}"
    traded, history = random_history(rng, sym)
    async with pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO quotes.candles (symbol, width_s, start_time, open, high, low, close, volume, trade_count,"
            " pv, first_at, first_seq, last_at, last_seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,"
            " $12, $13, $14)", traded)
        await conn.executemany(
            "INSERT INTO quotes.imported_candles (symbol, width_s, start_time, open, high, low, close, volume,"
            " trade_count, vwap) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)", history)
        repo = CandleRepository(conn)
        compared = 0
        for interval in Interval:
            first = bucket_start(datetime(2026, 10, 30, 11, tzinfo=UTC), interval)
            ranges = [(first, advance(first, interval, 6))] if interval is Interval.D1 else []
            for _ in range(4):
                at = datetime(2026, 10, 30, 12, tzinfo=UTC) + timedelta(seconds=rng.randrange(4 * 86400))
                start = bucket_start(at - timedelta(seconds=interval.seconds * rng.randrange(200)), interval)
                ranges.append((start, advance(start, interval, rng.randint(1, 400))))
            for start, stop in ranges:
                q = CandleQuery(sym, interval, start, stop, 5000)
                parts, spans = await repo.imported(sym, interval.seconds, start, stop)
                model = rollup(await repo.traded(sym, SOURCE_WIDTH[interval], start, stop) + parts, interval)
                got, covered = await _load(repo, q, start, stop)
                assert got == model, (interval, start, stop)
                assert (covered._starts, covered._ends) == (Coverage(spans)._starts, Coverage(spans)._ends)
                compared += len(model)
        assert compared > 0


async def test_an_imported_candle_without_volume_adds_nothing_to_the_vwap_around_it(
        pool, database_url, nats_url, ns, tmp_path, fresh_symbol):
    """Round 27: an imported 1m row of volume 0 (whose vwap the importer requires to be empty)
    made Σ price × quantity unknown, so the vwap of every coarser candle containing it was
    empty. It adds nothing (the report's csv/vw1.csv)."""
    sym = fresh_symbol
    await import_lines(tmp_path, database_url,
                       f"{sym},2026-12-01T15:00:00Z,1m,113.00,113.10,112.90,113.05,1000,10,113.01",
                       f"{sym},2026-12-01T15:01:00Z,1m,113.05,113.20,113.00,113.15,500,5,113.1",
                       f"{sym},2026-12-01T15:05:00Z,1m,113.15,113.20,113.00,113.15,500,5,113.1",
                       f"{sym},2026-12-01T15:07:00Z,1m,113.15,113.15,113.15,113.15,0,0,")
    start, end = datetime(2026, 12, 1, 15, tzinfo=UTC), datetime(2026, 12, 1, 15, 10, tzinfo=UTC)
    async with quote_service(pool, nats_url, ns, candles_writer=False) as svc:
        got = {}
        for interval in (I.CANDLE_INTERVAL_1M, I.CANDLE_INTERVAL_5M, I.CANDLE_INTERVAL_15M, I.CANDLE_INTERVAL_1H,
                         I.CANDLE_INTERVAL_1D):
            candles, _ = await all_pages(svc.stub, sym, interval, start, end)
            got[interval] = [(c.start_time.ToDatetime(tzinfo=UTC).strftime("%H:%M"), c.volume,
                              c.vwap and Decimal(c.vwap)) for c in candles]
    assert got[I.CANDLE_INTERVAL_1M][7] == ("15:07", 0, "")  # no volume: no vwap of its own
    assert got[I.CANDLE_INTERVAL_5M] == [("15:00", 1500, Decimal("113.04")), ("15:05", 500, Decimal("113.1"))]
    # (1000 × 113.01 + 500 × 113.1 + 500 × 113.1) / 2000
    assert got[I.CANDLE_INTERVAL_15M] == [("15:00", 2000, Decimal("113.055"))]
    assert got[I.CANDLE_INTERVAL_1H] == [("15:00", 2000, Decimal("113.055"))]
    assert got[I.CANDLE_INTERVAL_1D] == [("05:00", 2000, Decimal("113.055"))]
