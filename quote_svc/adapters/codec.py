"""Wire formats <-> domain: the engine's MarketDataEvent, and the Quote message (the gRPC
resource, also the value cached in Redis)."""
from __future__ import annotations

from datetime import timezone
from decimal import Decimal


from meshkit.money import fmt_price
from meshkit.prototime import timestamp
from quote_svc.domain.quotes import MarketData, Quote
from stockmesh.matching.v1 import matching_pb2
from stockmesh.quote.v1 import quote_pb2

UTC = timezone.utc


def _d(text: str) -> Decimal | None:
    return Decimal(text) if text else None


def md_from_bytes(data: bytes) -> MarketData:
    m = matching_pb2.MarketDataEvent.FromString(data)
    trade = _d(m.trade_price)
    return MarketData(
        symbol=m.symbol, sequence=m.sequence, time=m.time.ToDatetime(tzinfo=UTC), bid=_d(m.bid_price),
        bid_size=m.bid_size, ask=_d(m.ask_price), ask_size=m.ask_size,
        last=_d(m.last_price) or trade, volume=m.volume, trade_price=trade, trade_quantity=m.trade_quantity,
        halted=m.halted)


def quote_to_proto(q: Quote) -> quote_pb2.Quote:
    return quote_pb2.Quote(
        symbol=q.symbol, bid_price=fmt_price(q.bid) if q.bid is not None else "", bid_size=q.bid_size,
        ask_price=fmt_price(q.ask) if q.ask is not None else "", ask_size=q.ask_size,
        last_price=fmt_price(q.last) if q.last is not None else "", last_size=q.last_size, volume=q.volume,
        sequence=q.sequence, time=timestamp(q.time), halted=q.halted)


def quote_from_proto(m: quote_pb2.Quote) -> Quote:
    return Quote(symbol=m.symbol, bid=_d(m.bid_price), bid_size=m.bid_size, ask=_d(m.ask_price),
                 ask_size=m.ask_size, last=_d(m.last_price), last_size=m.last_size, volume=m.volume,
                 sequence=m.sequence, time=m.time.ToDatetime(tzinfo=UTC), halted=m.halted)
