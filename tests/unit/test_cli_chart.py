"""The terminal candle chart of `stockmesh chart`: where each candle's wick and body fall."""
from __future__ import annotations

from stockmesh.quote.v1 import quote_pb2

from meshkit.cli_client import draw


def candle(o: str, h: str, lo: str, c: str, trades: int = 1, volume: int | None = None) -> quote_pb2.Candle:
    return quote_pb2.Candle(open=o, high=h, low=lo, close=c, trade_count=trades,
                            volume=10 * trades if volume is None else volume)


def test_up_down_and_empty_candles_on_an_exact_scale() -> None:
    rows = draw([candle("10.00", "14.00", "10.00", "13.00"),   # up: body 10..13, wick to 14
                 candle("13.00", "13.00", "11.00", "11.00"),   # down: body 13..11
                 candle("11.00", "11.00", "11.00", "11.00", trades=0),  # no trades: a dot at the close
                 # imported without a trade count (0, volume > 0): traded, a body (round 18: a dot)
                 candle("10.00", "12.00", "10.00", "12.00", trades=0, volume=500)],
                height=5)
    assert [r.split("┤")[0].strip() for r in rows] == ["14.00", "", "12.00", "", "10.00"]
    cols = ["".join(r.split("┤")[1][x] for r in rows) for x in range(4)]
    # rows are 14, 13, 12, 11, 10
    assert cols[0] == "│████"
    assert cols[1] == " ▒▒▒ "
    assert cols[2] == "   · "
    assert cols[3] == "  ███"


def test_a_flat_chart_does_not_divide_by_zero() -> None:
    rows = draw([candle("5.00", "5.00", "5.00", "5.00"), candle("5.00", "5.00", "5.00", "5.00")], height=5)
    assert rows[0].endswith("┤██") and all(r.endswith("┤  ") for r in rows[1:])


def test_a_sub_dollar_symbol_is_labelled_to_its_tick() -> None:
    rows = draw([candle("0.8701", "0.8710", "0.8690", "0.8703")], height=3)
    assert [r.split("┤")[0].strip() for r in rows] == ["0.8710", "0.8700", "0.8690"]  # not 0.87 three times
