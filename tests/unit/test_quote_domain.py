"""quote_svc's plain parts: quotes from market data, conflation, candle arithmetic, CSV rows."""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from meshkit.calendar import NEW_YORK
from quote_svc.domain.candles import Candle, Interval, Part, bucket_seconds, bucket_start, fill, next_bucket, rollup
from quote_svc.domain.history import MalformedRow, parse
from quote_svc.domain.quotes import MarketData, next_quote
from quote_svc.service_layer.quotes import QuoteBook

UTC = timezone.utc
T = datetime(2024, 3, 4, 14, 0, tzinfo=UTC)
D = Decimal


def md(seq: int, trade: str | None = None, qty: int = 0, last: str | None = None, symbol: str = "AAPL",
       volume: int = 0, bid: str = "1") -> MarketData:
    return MarketData(symbol, seq, T, D(bid), 1, D("2"), 1, D(last) if last else (D(trade) if trade else None),
                      volume, D(trade) if trade else None, qty)


def test_quotes_move_forward_only_and_keep_the_last_size():
    q1 = next_quote(None, md(1, "10.00", 5))
    assert (q1.last, q1.last_size) == (D("10.00"), 5)
    q2 = next_quote(q1, md(2, last="10.00"))  # a book change: the last trade stays
    assert (q2.last, q2.last_size, q2.sequence) == (D("10.00"), 5, 2)
    assert next_quote(q2, md(2, "11.00", 1)) is None  # a repeat
    assert next_quote(q2, md(1, "11.00", 1)) is None  # an older event


def test_a_quote_says_whether_the_symbol_is_halted_and_survives_the_wire():
    from dataclasses import replace

    from quote_svc.adapters.codec import md_from_bytes, quote_from_proto, quote_to_proto
    from tests.support.quotes import md_event

    ev = md_event("AAPL", 3, bid="10.00", ask="10.05")
    ev.halted = True
    halted = next_quote(None, md_from_bytes(ev.SerializeToString()))
    assert halted.halted and quote_to_proto(halted).halted
    assert quote_from_proto(quote_to_proto(halted)) == halted  # as cached in Redis
    resumed = next_quote(halted, replace(md(4, last="10.00"), halted=False))
    assert not resumed.halted


async def test_a_subscription_keeps_one_quote_per_symbol():
    book = QuoteBook()
    book.apply(md(1, "10.00", 1))
    sub = book.subscribe(frozenset({"AAPL", "MSFT"}))
    assert (await sub.get()).sequence == 1  # the snapshot first
    for seq in range(2, 1000):  # trades: each moves the session volume
        book.apply(md(seq, "10.00", 1, volume=seq))
        book.apply(md(seq, "20.00", 1, symbol="MSFT", volume=seq))
    assert sub.pending == 2
    got = {q.symbol: q.sequence for q in [await sub.get(), await sub.get()]}
    assert got == {"AAPL": 999, "MSFT": 999}
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(sub.get(), 0.05)
    book.unsubscribe(sub)
    assert book.subscribers() == 0


async def test_a_change_the_quote_does_not_show_is_not_streamed_but_is_the_latest_quote():
    """The engine's feed also tells changes of depth below the top, which leave a quote as it
    was but for its sequence: streams are not sent those, GetQuote has the newest sequence, and
    the next change a client can see is streamed as usual."""
    book = QuoteBook()
    book.apply(md(1, "10.00", 1, volume=1))
    sub = book.subscribe(frozenset({"AAPL"}))
    assert (await sub.get()).sequence == 1  # the snapshot
    for seq in (2, 3):  # deeper levels moved: the same bid, ask, last and volume
        assert book.apply(md(seq, last="10.00", volume=1)).sequence == seq
    assert sub.pending == 0 and book.quotes["AAPL"].sequence == 3
    book.apply(md(4, last="10.00", volume=1, bid="1.5"))  # the bid moved
    got = await sub.get()
    assert (got.sequence, got.bid) == (4, D("1.5"))
    book.apply(md(5, "10.00", 2, volume=3))  # a trade at the same price: the volume moves
    assert (await sub.get()).sequence == 5


async def test_a_conflated_change_back_to_what_the_client_has_is_not_streamed():
    """A change and its undoing, both while the client was not reading (the bid size up,
    then down again): conflation keeps only the last, which looks like what the client last
    got, so the client gets nothing for it (acceptance round 8 saw it once); the next real
    change comes as usual."""
    book = QuoteBook()
    book.apply(md(1, "10.00", 1, volume=1))
    sub = book.subscribe(frozenset({"AAPL"}))
    assert (await sub.get()).sequence == 1
    book.apply(md(2, last="10.00", volume=1, bid="1.5"))
    book.apply(md(3, last="10.00", volume=1, bid="1"))  # back: the client still has this
    assert sub.pending == 1  # the book offered it; the subscription drops it when read
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(sub.get(), 0.05)
    book.apply(md(4, last="10.00", volume=1, bid="2"))
    assert ((got := await sub.get()).sequence, got.bid) == (4, D("2"))


async def test_closing_the_book_ends_every_subscription_even_later_ones():
    from quote_svc.service_layer.quotes import Closing

    book = QuoteBook()
    book.apply(md(1, "10.00", 1))
    waiting, pending = book.subscribe(frozenset({"MSFT"})), book.subscribe(frozenset({"AAPL"}))
    reader = asyncio.ensure_future(waiting.get())  # nothing for it yet: it waits
    await asyncio.sleep(0)
    book.close()
    for get in (reader, pending.get(), book.subscribe(frozenset({"AAPL"})).get()):
        with pytest.raises(Closing):  # a waiting reader, a pending snapshot, a stream opened after
            await get


def test_buckets():
    t = datetime(2024, 3, 5, 3, 30, 7, 500, tzinfo=UTC)  # 22:30 on 03-04 in New York
    assert bucket_start(t, Interval.M5) == datetime(2024, 3, 5, 3, 30, tzinfo=UTC)
    assert bucket_start(t, Interval.D1) == datetime(2024, 3, 4, 5, tzinfo=UTC)
    # Far from 1970 too (round 18: a float timestamp put 00:00:00.999999 in the next second).
    for far in (datetime(1000, 1, 1, 0, 0, 0, 999_999, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, 999_999,
                                                                              tzinfo=UTC)):
        assert bucket_start(far, Interval.S1) == far.replace(microsecond=0)
        assert bucket_start(far, Interval.H1) == far.replace(minute=0, second=0, microsecond=0)
    assert bucket_seconds(datetime(1970, 1, 1, 0, 1, 0, 1, tzinfo=UTC), 60, up=True) == 120
    assert bucket_seconds(datetime(1970, 1, 1, 0, 1, tzinfo=UTC), 60, up=True) == 60
    assert bucket_seconds(datetime(1969, 12, 31, 23, 59, 30, tzinfo=UTC), 60, up=True) == 0
    # Across the DST change (2024-03-10) a New York day is 23 hours long.
    sat = datetime(2024, 3, 10, 5, tzinfo=UTC)
    assert next_bucket(sat, Interval.D1) == datetime(2024, 3, 11, 4, tzinfo=UTC)


def test_rollup_uses_the_coarsest_width_and_fill_is_flat():
    def c(minute: int, o: str, cl: str, v: int) -> Candle:
        return Candle(T.replace(minute=minute), D(o), max(D(o), D(cl)), min(D(o), D(cl)), D(cl), v, 1, D(o) * v)
    # Imported history at two widths: the coarsest present in a bucket is used.
    parts = [Part(60, c(0, "10", "11", 5), imported=True), Part(60, c(1, "11", "12", 5), imported=True),
             Part(300, c(0, "9", "8", 50), imported=True)]
    five = rollup(parts, Interval.M5)
    assert five[T].volume == 50 and five[T].open == D("9")
    one = rollup(parts[:2], Interval.M5)[T]
    assert (one.open, one.close, one.volume, one.trade_count, one.vwap) == (D("10"), D("12"), 10, 2, D("10.5"))
    filled = fill({T: one}, T, T.replace(minute=15), Interval.M5, None, T.replace(hour=20))
    assert [(x.close, x.trade_count) for x in filled] == [(D("12"), 2), (D("12"), 0), (D("12"), 0)]


def test_a_rollup_leaves_out_only_imported_parts_that_a_coarser_one_covers():
    """Imported 1m rows of 14:30-14:32 and a 5m row of 14:35 cover different periods: a 15m,
    1h or 1d candle of them adds them all up (acceptance round 12: only the 5m row was kept,
    2,000 shares of 5,000). A 1m row inside an imported 5m or 1d row is still left out."""
    at = datetime(2026, 12, 1, 14, 30, tzinfo=UTC)

    def c(minute: int, o: str, h: str, lo: str, cl: str, v: int) -> Candle:
        return Candle(at.replace(minute=minute), D(o), D(h), D(lo), D(cl), v, v // 100, D(o) * v)
    minutes = [Part(60, c(30, "60.00", "60.50", "59.90", "60.10", 1000), imported=True),
               Part(60, c(31, "60.10", "60.20", "60.00", "60.05", 500), imported=True),
               Part(60, c(32, "60.05", "61.00", "60.05", "60.90", 1500), imported=True)]
    five = Part(300, c(35, "60.90", "61.10", "60.80", "61.00", 2000), imported=True)
    for interval in (Interval.M15, Interval.H1, Interval.D1):
        (got,) = rollup(minutes + [five], interval).values()
        assert (got.open, got.high, got.low, got.close, got.volume, got.trade_count) == (
            D("60.00"), D("61.10"), D("59.90"), D("61.00"), 5000, 50), interval
    inside = Part(60, c(36, "61.00", "61.00", "61.00", "61.00", 700), imported=True)  # within the 5m row
    day = Part(86400, Candle(datetime(2026, 12, 1, 5, tzinfo=UTC), D("59"), D("62"), D("58"), D("61"), 9000, 90,
                             D("59") * 9000), imported=True)
    assert rollup(minutes + [five, inside], Interval.M15)[at.replace(minute=30)].volume == 5000
    assert rollup(minutes + [five, inside, day], Interval.D1)[day.candle.start].volume == 9000


def test_a_rollup_orders_traded_and_imported_parts_by_their_own_times():
    """The open is the part whose trades came first and the close the one whose trades came
    last, whichever source: an imported 1m candle at 04:52 is not the open of a 5m candle
    traded from 04:50 (acceptance: it was, imported being taken as earlier bucket-wide)."""
    def c(minute: int, o: str, cl: str, v: int, n: int | None = 1) -> Candle:
        return Candle(T.replace(minute=minute), D(o), max(D(o), D(cl)), min(D(o), D(cl)), D(cl), v, n, D(o) * v)

    def traded(minute: int, o: str, cl: str, first_s: int = 10, last_s: int = 50) -> Part:
        return Part(60, c(minute, o, cl, 3), first_at=T.replace(minute=minute, second=first_s),
                    last_at=T.replace(minute=minute, second=last_s))

    trades = [traded(0, "117.55", "117.60"), traded(1, "117.60", "117.70"), traded(2, "117.70", "117.65"),
              traded(3, "117.65", "117.80")]
    at_two = Part(60, c(2, "117.00", "117.20", 100, 10), imported=True)
    five = rollup([*trades, at_two], Interval.M5)[T]
    assert (five.open, five.close, five.low, five.volume, five.trade_count) == (
        D("117.55"), D("117.80"), D("117.00"), 112, 14)
    # In its own minute, the imported candle opens before the traded trades (at its start)
    # and closes after them (at its end, as CandleRepository.close_before takes it).
    two = rollup([trades[2], at_two], Interval.M1)[T.replace(minute=2)]
    assert (two.open, two.close) == (D("117.00"), D("117.20"))
    # Traded only before it: the imported candle closes the bucket; traded at its very start
    # (the same instant): the imported candle still opens first and closes last; traded at
    # its end (the next minute's first instant): the traded trade closes it.
    assert rollup([trades[0], at_two], Interval.M5)[T].close == D("117.20")
    early = traded(2, "117.50", "117.50", first_s=0, last_s=0)
    assert rollup([at_two, early], Interval.M5)[T].open == D("117.00")
    assert rollup([trades[0], at_two, early], Interval.M5)[T].close == D("117.20")
    at_end = traded(3, "117.40", "117.40", first_s=0, last_s=0)
    assert rollup([trades[0], at_two, at_end], Interval.M5)[T].close == D("117.40")
    # An imported candle without a trade count makes the total unknown.
    unknown = Part(60, c(4, "117.00", "117.00", 5, None), imported=True)
    assert rollup([*trades, unknown], Interval.M5)[T].trade_count is None


def test_fill_leaves_out_buckets_inside_coarser_imported_candles_without_data_of_their_own():
    from datetime import timedelta

    from quote_svc.domain.candles import Coverage

    def at(minute: int) -> datetime:
        return T.replace(minute=minute)

    traded = Candle(at(3), D("10"), D("10"), D("10"), D("10"), 1, 1, D("10"))
    # A 5m import 14:00-14:05 and, overlapping, a 1m one at 14:04; another at 14:07.
    covered = Coverage([(at(0), at(5)), (at(4), at(5)), (at(7), at(8))])
    got = fill({at(3): traded}, at(0), at(10), Interval.M1, D("9"), T.replace(hour=20), covered)
    assert [(c.start.minute, c.trade_count) for c in got] == [(3, 1), (5, 0), (6, 0), (8, 0), (9, 0)]
    assert [covered.overlaps(at(m), at(m) + timedelta(seconds=1)) for m in (0, 4, 5, 6, 7, 8)] == [
        True, True, False, False, True, False]


def test_daily_candles_skip_weekends_and_exchange_holidays_without_trades():
    # Wednesday 2026-11-25 to Monday 2026-11-30: Thanksgiving (Thursday) and the weekend have no
    # session, so no flat candle; Friday (an early close) and Monday have one.
    wed = bucket_start(datetime(2026, 11, 25, 17, tzinfo=UTC), Interval.D1)
    traded = Candle(wed, D("10"), D("10"), D("10"), D("10"), 1, 1, D("10"))
    days = fill({wed: traded}, wed, bucket_start(datetime(2026, 12, 1, 17, tzinfo=UTC), Interval.D1), Interval.D1,
                None, datetime(2026, 12, 2, tzinfo=UTC))
    assert [(c.start.astimezone(NEW_YORK).date().isoformat(), c.trade_count) for c in days] == [
        ("2026-11-25", 1), ("2026-11-27", 0), ("2026-11-30", 0)]


def test_csv_rows_are_checked_with_their_line():
    header = ["symbol", "start_time", "interval", "open", "high", "low", "close", "volume"]
    good = {"symbol": "AAPL", "start_time": "2024-03-04T14:30:00Z", "interval": "1m", "open": "1", "high": "2",
            "low": "1", "close": "2", "volume": "10"}
    assert len(list(parse(header, [(2, good)], {"AAPL"}))) == 1
    with pytest.raises(MalformedRow, match="line 1: column\\(s\\) named more than once: volume"):
        list(parse(header + ["volume"], [(2, good)], {"AAPL"}))
    # A file is typed by people: a symbol in any case (the RPCs take it only as listed).
    assert [c.symbol for c in parse(header, [(2, dict(good, symbol="aapl"))], {"AAPL"})] == ["AAPL"]
    # Zeros past the microseconds are still the same instant.
    assert len(list(parse(header, [(2, dict(good, start_time="2024-03-04T14:30:00.000000000Z"))], {"AAPL"}))) == 1
    for bad, words in [({"start_time": "2024-03-04T14:30:30Z"}, "not the start"),
                       # Round 27: digits past the microseconds, which datetime.fromisoformat
                       # drops, were taken as the 14:30 candle (and overwrote it).
                       ({"start_time": "2024-03-04T14:30:00.000000001Z"},
                        "2024-03-04T14:30:00.000000001Z is not the start"),
                       ({"start_time": "2024-03-04T14:30:00,0000000001+00:00"}, "not the start of a 1m candle"),
                       ({"start_time": "2024-03-04T14:30:00"}, "UTC offset"),
                       ({"symbol": "NOPE"}, "unknown symbol"), ({"high": "0.5"}, "low ≤ open"),
                       ({"volume": "-1"}, "whole number"), ({"interval": "2m"}, "interval"),
                       # Beyond the days GetCandles can bucket (an OverflowError, not a line, before).
                       ({"start_time": "0001-01-01T00:00:00Z", "interval": "1d"}, "0001-01-02T00:00:00Z"),
                       ({"start_time": "9999-12-31", "interval": "1d"}, "9999-12-30"),
                       ({"start_time": "0001-01-01T00:00:00+01:00"}, "before 0001-01-01"),
                       # A 1m row is part of its New York day's 1d candle too, which one before
                       # 0001-01-02 is not (round 16: taken, then every GetCandles over it INTERNAL).
                       ({"start_time": "0001-01-01T00:00:00Z"}, "a row is part of its New York day's 1d candle"),
                       # Off the tick (0.01 at 1.00 and above), as no order's price can be.
                       ({"open": "1.005"}, "multiple of the tick size 0.01"),
                       ({"close": "1.999"}, "multiple of the tick size 0.01"),
                       ({"low": "0.50005", "open": "0.6"}, "at most 4 decimal places"),
                       # Plain decimals only, as money and prices everywhere else.
                       ({"high": "2E0"}, "plain decimal number"), ({"open": "1."}, "plain decimal number"),
                       # Beyond the database's bigint (an asyncpg DataError after the checks, before).
                       ({"volume": "99999999999999999999999"}, "at most 1,000,000,000,000"),
                       ({"trade_count": "1000000000001"}, "at most 1,000,000,000,000"),
                       ({"volume": "²"}, "whole number"), ({"volume": "١٢"}, "whole number"),
                       # Trades without volume: nothing to weight a vwap with either.
                       ({"volume": "0", "trade_count": "5"}, "trade_count is 5 but volume is 0"),
                       ({"volume": "0", "vwap": "1.5"}, "no volume to weight"),
                       # A daily candle of a day without a session.
                       ({"interval": "1d", "start_time": "2026-11-01"}, "2026-11-01 is a Sunday, a day without"),
                       ({"interval": "1d", "start_time": "2026-11-26T05:00:00Z"}, "is Thanksgiving Day"),
                       # Not history yet.
                       ({"start_time": "2030-01-02T14:30:00Z"}, "not over yet")]:
        with pytest.raises(MalformedRow) as err:
            list(parse(header, [(2, good), (3, dict(good, **bad))], {"AAPL"}))
        assert err.value.line == 3 and words in str(err.value), str(err.value)
    # A candle must be over: today's 1d candle is not, yesterday's is; no trades, no volume: fine.
    now = datetime(2026, 12, 4, 20, tzinfo=UTC)
    day = dict(good, interval="1d", start_time="2026-12-04")
    with pytest.raises(MalformedRow, match="1d candle from 2026-12-04T05:00:00Z is not over yet"):
        list(parse(header, [(2, day)], {"AAPL"}, now=now))
    quiet = dict(day, start_time="2026-12-03", volume="0", trade_count="0", open="1", high="1", low="1", close="1")
    assert list(parse(header, [(2, quiet)], {"AAPL"}, now=now))[0].volume == 0
    # Below a dollar the tick is 0.0001; a vwap is an average and keeps up to 6 places.
    penny = dict(good, open="0.8755", low="0.8755", high="1", close="1", vwap="0.912345")
    assert list(parse(header + ["vwap"], [(2, penny)], {"AAPL"}))[0].open == Decimal("0.8755")
    with pytest.raises(MalformedRow) as err:
        list(parse(header, [(2, good), (3, good)], {"AAPL"}))
    assert "same candle as line 2" in str(err.value)


def test_a_file_that_is_not_utf8_names_the_line_of_the_first_bad_byte(tmp_path):
    from quote_svc.service_layer.history import read_file

    png = tmp_path / "chart.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(MalformedRow) as err:
        read_file(png)
    assert err.value.line == 1 and "byte 0x89 at column 1" in str(err.value)
    latin = tmp_path / "latin1.csv"
    latin.write_bytes(b"\xef\xbb\xbfsymbol,start_time,interval,open,high,low,close,volume\n"
                      b"AAPL,2024-03-04T14:30:00Z,1m,1,2,1,2,10\nAAPL,2024-03-04T14:31:00Z,1m,1,2,1,2,10 caf\xe9\n")
    with pytest.raises(MalformedRow) as err:
        read_file(latin)
    assert err.value.line == 3 and "byte 0xe9 at column 44" in str(err.value)


async def test_no_quote_yet_is_unavailable_while_catching_up_and_not_found_once_caught_up():
    """A replica just (re)started has not read the feed up to its present: a symbol without a
    quote may well be trading, so the answer is to retry, not that there is none."""
    from meshkit.errors import NotFound, Unavailable
    from quote_svc.service_layer.quotes import get_quote

    book = QuoteBook()
    with pytest.raises(Unavailable) as catching_up:
        get_quote(book, "KO")
    assert (catching_up.value.reason, catching_up.value.retry_after_seconds) == ("QUOTES_CATCHING_UP", 0.2)
    book.ready.set()
    with pytest.raises(NotFound) as none:
        get_quote(book, "KO")
    assert none.value.reason == "QUOTE_NOT_FOUND"
    book.apply(md(1, "10.00", 1))
    assert get_quote(book, "AAPL").sequence == 1


def test_a_record_over_several_lines_is_named_by_its_first(tmp_path):
    """Round 16: a record with a quoted line break was named by its last line."""
    from quote_svc.service_layer.history import read_file

    f = tmp_path / "candles.csv"
    f.write_text('symbol,start_time,interval,open,high,low,close,volume\n'
                 'AAPL,2024-03-04T14:30:00Z,1m,1,2,1,2,10\n'
                 '\n'
                 'AAPL,2024-03-04T14:31:00Z,1m,1,2,1,2,"1\n0"\n'
                 'AAPL,2024-03-04T14:32:00Z,1m,1,2,1,2,10\n')
    with pytest.raises(MalformedRow) as err:
        read_file(f)
    assert err.value.line == 4 and "volume" in str(err.value), err.value
    f.write_text('symbol,start_time,interval,open,high,low,close,volume\n'
                 'AAPL,2024-03-04T14:30:00Z,1m,1,2,1,2,10\n'
                 'AAPL,2024-03-04T14:31:00Z,1m,1,2,1,2,x\n')
    with pytest.raises(MalformedRow) as err:
        read_file(f)
    assert err.value.line == 3


def test_unknown_stream_symbols_are_each_named_at_their_own_index():
    """Round 18: a repeated unknown symbol was named at the first one's index each time."""
    from meshkit.errors import InvalidArgument
    from quote_svc.service_layer.quotes import stream_symbols

    with pytest.raises(InvalidArgument) as refused:
        stream_symbols(["AAPL", "NOPE", "MSFT", "NOPE", "ZZZ"])
    assert [v.field for v in refused.value.violations] == ["symbols[1]", "symbols[3]", "symbols[4]"]
