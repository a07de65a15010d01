"""Prices on the wire, written one way everywhere (meshkit.money.fmt_price): at the precision of
their tick, two decimals at 1.00 and above, four below (SIRI at 0.80 is "0.8000", never "0.80"
in one reply and "0.8936" in the next). Cash keeps two (meshkit.money.fmt)."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from decimal import Decimal as D

import pytest

from meshkit.money import fmt, fmt_price

NOW = datetime(2026, 1, 5, 15, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("price,text", [
    ("0.8", "0.8000"), ("0.893", "0.8930"), ("0.8936", "0.8936"), ("0.875", "0.8750"), ("0.0001", "0.0001"),
    ("0.9999", "0.9999"), ("1", "1.00"), ("1.0000", "1.00"), ("187.25", "187.25"), ("187.2500", "187.25"),
    ("99999999.9999", "99999999.9999"), ("1E+3", "1000.00"),
    # an average (fill price, VWAP) keeps the digits it has: never rounded to the tick
    ("187.2533", "187.2533"), ("0.893612", "0.893612")])
def test_a_price_is_written_at_its_ticks_precision(price, text):
    assert fmt_price(D(price)) == text


def test_cash_keeps_two_places():
    assert (fmt(D("0.8")), fmt(D("1000"))) == ("0.80", "1000.00")


def test_quotes_and_candles():
    from quote_svc.adapters.codec import quote_to_proto
    from quote_svc.domain.candles import Candle
    from quote_svc.domain.quotes import Quote
    from quote_svc.entrypoints.mapping import candle_to_proto

    q = quote_to_proto(Quote("SIRI", D("0.80"), 5, D("0.893"), 5, D("0.8936"), 1, 10, 1, NOW))
    assert (q.bid_price, q.ask_price, q.last_price) == ("0.8000", "0.8930", "0.8936")
    c = candle_to_proto(Candle(NOW, D("0.8"), D("0.9"), D("0.75"), D("0.8936"), 4, 2, D("3.2")))
    assert (c.open, c.high, c.low, c.close, c.vwap) == ("0.8000", "0.9000", "0.7500", "0.8936", "0.8000")
    c = candle_to_proto(Candle(NOW, D("187.2"), D("187.5"), D("187"), D("187.25"), 3, 2, D("561.95")))
    assert (c.open, c.high, c.low, c.close, c.vwap) == ("187.20", "187.50", "187.00", "187.25", "187.316667")


async def test_list_symbols():
    from quote_svc.entrypoints.grpc_server import QuoteServicer
    from stockmesh.quote.v1 import quote_service_pb2 as pb

    listed = (await QuoteServicer.ListSymbols(None, pb.ListSymbolsRequest(), None)).symbols
    by = {s.symbol: s for s in listed}
    assert (by["SIRI"].tick_size, by["SIRI"].reference_price) == ("0.0001", "0.8750")
    assert (by["AAPL"].tick_size, by["AAPL"].reference_price) == ("0.01", "187.25")


def test_order_book_levels_and_market_data():
    from matching_svc.domain.model import to_ticks
    from matching_svc.service_layer.engine import price_text

    assert [price_text(to_ticks(D(p))) for p in ("0.80", "0.893", "0.8936", "1.5", "187.25")] == [
        "0.8000", "0.8930", "0.8936", "1.50", "187.25"]


def test_order_prices():
    from order_svc.domain.model import Fill, Order, OrderRequest, OrderType, Side, Status, TimeInForce
    from order_svc.entrypoints.mapping import order_to_proto, update_to_proto

    req = OrderRequest(account_id="a", client_order_id="c", symbol="SIRI", side=Side.BUY, type=OrderType.STOP_LIMIT,
                       quantity=3, limit_price=D("0.9"), stop_price=D("0.85"), time_in_force=TimeInForce.DAY)
    o = Order(order_id=uuid.uuid4(), request=req, status=Status.FILLED, created_at=NOW, updated_at=NOW,
              filled_quantity=3, fill_notional=D("2.7"))
    m = order_to_proto(o)
    assert (m.limit_price, m.stop_price, m.average_fill_price) == ("0.9000", "0.8500", "0.9000")
    u = update_to_proto(1, o, Fill("f1", D("0.9"), 3, NOW))
    assert u.fill.price == "0.9000"


def test_an_average_fill_price_keeps_six_places_like_a_vwap():
    """docs/market-data.md: an average keeps the further digits it has, rounded half-even to 6
    places as a candle's VWAP is. (It was rounded to 4: 3 @ 0.8936 and 4 @ 0.8937 showed
    "0.8937", the higher of the two prices.)"""
    from order_svc.domain.model import Order, OrderRequest, OrderType, Side, Status, TimeInForce
    from order_svc.entrypoints.mapping import order_to_proto

    def average(symbol: str, filled: int, notional: str) -> str:
        req = OrderRequest(account_id="a", client_order_id="c", symbol=symbol, side=Side.BUY, type=OrderType.MARKET,
                           quantity=filled, limit_price=None, stop_price=None, time_in_force=TimeInForce.DAY)
        return order_to_proto(Order(order_id=uuid.uuid4(), request=req, status=Status.FILLED, created_at=NOW,
                                    updated_at=NOW, filled_quantity=filled, fill_notional=D(notional))).average_fill_price

    assert average("SIRI", 7, "6.2556") == "0.893657"  # 3 × 0.8936 + 4 × 0.8937
    assert average("AAPL", 3, "561.95") == "187.316667"  # 187.25 + 2 × 187.35
    assert average("AAPL", 2, "374.50") == "187.25"  # an exact average shows the tick's places
    assert average("SIRI", 2, "1.6001") == "0.80005"
    assert average("SIRI", 8, "7.1489") == "0.893612"  # 7 × 0.8936 + 0.8937 = 8 × 0.8936125: half-even

