"""QuoteService over gRPC: proto -> query, call the service layer, domain -> proto."""
from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

import grpc
from prometheus_client import Gauge

from meshkit import paging, symbols as listing
from meshkit.auth import caller_account, token_ends_at, token_expired
from meshkit.errors import FieldViolation, InvalidArgument, Violations
from meshkit.money import fmt, fmt_price
from meshkit.streams import StreamLimit
from quote_svc.domain.candles import Interval, bucket_start, is_aligned, iso, time_range
from quote_svc.entrypoints import mapping
from quote_svc.service_layer import candles, quotes
from quote_svc.service_layer.candles import UowFactory
from stockmesh.quote.v1 import quote_pb2, quote_service_pb2 as pb, quote_service_pb2_grpc

CANDLE_PAGE_DEFAULT = 500
CANDLE_PAGE_MAX = 5000
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
OPEN_STREAMS = Gauge("stockmesh_quote_streams", "StreamQuotes calls this replica is serving")
# StreamQuotes calls one account may have open at once on one replica (QUOTE_STREAMS_PER_ACCOUNT):
# an app needs one or a few (a stream carries up to 100 symbols); each holds a subscription, a
# queue and a task, and one token opening thousands slowed everyone's quotes.
STREAMS_PER_ACCOUNT = 50


def _time(request: pb.GetCandlesRequest, name: str, interval: Interval | None, v: Violations, *,
          round_up: bool = False) -> datetime | None:
    """The request's Timestamp `name` as a datetime, or None after adding its violation:
    required, a valid Timestamp, and within what the interval's candles can be built for.
    Nanoseconds are cut off (datetimes hold microseconds), or rounded up with `round_up`."""
    if not request.HasField(name):
        v.add(name, "is required")
        return None
    ts = getattr(request, name)
    if not 0 <= ts.nanos <= 999_999_999:
        v.add(name, f"nanos must be from 0 to 999,999,999, got {ts.nanos}")
        return None
    if not mapping.TIMESTAMP_SECONDS[0] <= ts.seconds <= mapping.TIMESTAMP_SECONDS[1]:
        v.add(name, "must be from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z "
                    f"(google.protobuf.Timestamp's range), got seconds {ts.seconds}")
        return None
    at = mapping.to_datetime(ts)
    if round_up and ts.nanos % 1000 and at < datetime.max.replace(tzinfo=timezone.utc):
        at += timedelta(microseconds=1)
    if interval is not None:
        first, last = time_range(interval)
        if not first <= at <= last:
            v.add(name, f"must be from {iso(first)} to {iso(last)} for {interval.label} candles "
                        f"(a 1d candle is a New York trading day), got {iso(at)}")
            return None
    return at


def _candle_query(request: pb.GetCandlesRequest) -> candles.CandleQuery:
    v = Violations()
    if not request.symbol:
        v.add("symbol", "is required")
    else:
        listing.known(request.symbol)  # raises UNKNOWN_SYMBOL
    interval = mapping.INTERVALS.get(request.interval)
    if interval is None:
        v.add("interval", "is required" if request.interval == 0 else f"unknown value {request.interval}")
    start = _time(request, "start_time", interval, v)
    # Buckets start on whole seconds: one starting in the end's cut-off nanoseconds would still
    # overlap the range [start_time, end_time) (round 12: it was left out).
    end = _time(request, "end_time", interval, v, round_up=True)
    raw_start, raw_end = request.start_time, request.end_time
    if start is not None and end is not None and (raw_end.seconds, raw_end.nanos) <= (raw_start.seconds, raw_start.nanos):
        v.add("end_time", "must be after start_time")
    size = paging.page_size(request.page_size, v, default=CANDLE_PAGE_DEFAULT, maximum=CANDLE_PAGE_MAX)
    key = mapping.query_key(request.symbol, request.interval, request.start_time, request.end_time)
    cursor = paging.decode_token(request.page_token, v, fields={"at": paging.epoch_seconds}, scope=key,
                                 scope_name="query", scope_hint="symbol, interval and range must not change")
    v.raise_if_any()
    assert interval is not None and start is not None and end is not None
    at = cursor["at"] if cursor else None
    # Ours are bucket starts within the range; the key alone does not prove a token ours.
    if at is not None and not (bucket_start(start, interval) <= at < end and is_aligned(at, interval)):
        raise InvalidArgument([FieldViolation("page_token", "is not a token returned by a previous call")])
    return candles.CandleQuery(request.symbol, interval, start, end, size, at)


class QuoteServicer(quote_service_pb2_grpc.QuoteServiceServicer):
    def __init__(self, book: quotes.QuoteBook, uow_factory: UowFactory, *,
                 streams_per_account: int = STREAMS_PER_ACCOUNT) -> None:
        self.book = book
        self.streams = StreamLimit("quote", streams_per_account,
                                   hint=f"one stream carries up to {quotes.MAX_STREAM_SYMBOLS} symbols")
        self.uow = uow_factory
        self.to_proto = mapping.QuoteProtos()
        self.candle_cache = candles.CandleCache()

    async def ListSymbols(self, request: pb.ListSymbolsRequest,
                          context: grpc.aio.ServicerContext) -> pb.ListSymbolsResponse:
        return pb.ListSymbolsResponse(symbols=[
            quote_pb2.Symbol(symbol=s.symbol, name=s.name, tick_size=fmt(s.tick_size),
                             reference_price=fmt_price(s.reference_price))
            for s in sorted(listing.listed().values(), key=lambda s: s.symbol)])

    async def GetQuote(self, request: pb.GetQuoteRequest, context: grpc.aio.ServicerContext) -> pb.GetQuoteResponse:
        return pb.GetQuoteResponse(quote=self.to_proto(quotes.get_quote(self.book, request.symbol)))

    async def StreamQuotes(self, request: pb.StreamQuotesRequest, context: grpc.aio.ServicerContext):
        wanted = quotes.stream_symbols(request.symbols)
        # RESOURCE_EXHAUSTED / TOO_MANY_STREAMS past the account's limit. Every call through Envoy
        # has an account; one on the replica's own port without a token (tests, tools on the
        # host) is not counted.
        with self.streams.open(caller_account()):
            sub = self.book.subscribe(wanted)
            OPEN_STREAMS.inc()
            expiry = None
            try:
                # Ends UNAUTHENTICATED TOKEN_EXPIRED when Envoy would no longer accept its token.
                if (ends := token_ends_at()) is not None:
                    expiry = asyncio.get_running_loop().call_later(max(0.0, ends - time.time()), sub.close,
                                                                   token_expired("the quote stream"))
                # The headers come at once and say which of the symbols have a quote, whose snapshot
                # follows: a symbol never quoted yet has none (as GetQuote's NOT_FOUND), and a client
                # asking only for such symbols could not tell that its stream was open.
                await context.send_initial_metadata(
                    (("x-stockmesh-snapshot", ",".join(sorted(s for s in wanted if s in self.book.quotes))),))
                while True:
                    # Raises quotes.Closing (UNAVAILABLE, SHUTTING_DOWN) once the service stops.
                    quote = await sub.get()
                    yield self.to_proto.encoded(quote)  # serialized once for every stream
            finally:
                if expiry is not None:
                    expiry.cancel()
                OPEN_STREAMS.dec()
                self.book.unsubscribe(sub)

    async def GetCandles(self, request: pb.GetCandlesRequest,
                         context: grpc.aio.ServicerContext) -> pb.GetCandlesResponse | bytes:
        q = _candle_query(request)
        page = await candles.get_candles(q, self.uow, cache=self.candle_cache)
        token = ""
        if page.next_cursor is not None:
            key = mapping.query_key(request.symbol, request.interval, request.start_time, request.end_time)
            token = paging.encode_token({"at": int((page.next_cursor - EPOCH).total_seconds())}, scope=key)
        if page.run is None or not page.cached:
            return pb.GetCandlesResponse(candles=[mapping.candle_to_proto(c) for c in page.candles],
                                         next_page_token=token)
        # The reply goes out already serialized: the cached final candles are serialized once
        # per run, and protobuf's wire format lets the rest (the candles built now, the token)
        # follow them as a serialized message of its own.
        rest = pb.GetCandlesResponse(candles=[mapping.candle_to_proto(c) for c in page.candles[page.cached:]],
                                     next_page_token=token)
        return b"".join(page.run.render(page.cached, _encoded_candle)) + rest.SerializeToString()


def _encoded_candle(c) -> bytes:
    """One candle as the bytes of GetCandlesResponse's `candles` field (tag, length, message)."""
    return pb.GetCandlesResponse(candles=[mapping.candle_to_proto(c)]).SerializeToString()
