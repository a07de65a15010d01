"""proto <-> domain, beside the servicer."""
from __future__ import annotations

import hashlib
from datetime import datetime, timezone

from google.protobuf.timestamp_pb2 import Timestamp

from meshkit.money import fmt_price
from meshkit.prototime import timestamp
from quote_svc.adapters.codec import quote_to_proto
from quote_svc.domain.candles import Candle, Interval
from quote_svc.domain.quotes import Quote
from stockmesh.quote.v1 import quote_pb2

INTERVALS = {
    quote_pb2.CANDLE_INTERVAL_1S: Interval.S1, quote_pb2.CANDLE_INTERVAL_1M: Interval.M1,
    quote_pb2.CANDLE_INTERVAL_5M: Interval.M5, quote_pb2.CANDLE_INTERVAL_15M: Interval.M15,
    quote_pb2.CANDLE_INTERVAL_1H: Interval.H1, quote_pb2.CANDLE_INTERVAL_1D: Interval.D1,
}


class QuoteProtos:
    """Each quote is turned into its message, and serialized, once however many streams
    carry it."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[Quote, quote_pb2.Quote, bytes]] = {}

    def _entry(self, q: Quote) -> tuple[Quote, quote_pb2.Quote, bytes]:
        hit = self._last.get(q.symbol)
        if hit is not None and hit[0] is q:
            return hit
        msg = quote_to_proto(q)
        entry = self._last[q.symbol] = (q, msg, msg.SerializeToString())
        return entry

    def __call__(self, q: Quote) -> quote_pb2.Quote:
        return self._entry(q)[1]

    def encoded(self, q: Quote) -> bytes:
        return self._entry(q)[2]


# google.protobuf.Timestamp's valid seconds: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
TIMESTAMP_SECONDS = (-62_135_596_800, 253_402_300_799)


def to_datetime(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=timezone.utc)


def candle_to_proto(c: Candle) -> quote_pb2.Candle:
    vwap = c.vwap
    return quote_pb2.Candle(
        start_time=timestamp(c.start), open=fmt_price(c.open), high=fmt_price(c.high), low=fmt_price(c.low),
        close=fmt_price(c.close), volume=c.volume, trade_count=c.trade_count or 0,
        vwap=fmt_price(vwap) if vwap is not None else "",
        is_final=c.is_final)


def query_key(symbol: str, interval: int, start: Timestamp, end: Timestamp) -> str:
    """Binds a page token to the query it continues."""
    text = f"{symbol}|{interval}|{start.seconds}.{start.nanos}|{end.seconds}.{end.nanos}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]
