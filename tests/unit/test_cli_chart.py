"""The terminal candle chart of `stockmesh chart`: where each candle's wick and body fall."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from click.testing import CliRunner
from stockmesh.quote.v1 import quote_pb2, quote_service_pb2

from meshkit import cli_client
from meshkit.cli import main
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


@pytest.mark.parametrize("interval,starts,span", [
    # A 1d candle is a New York session day: its date, not its start (midnight New York) in UTC
    # (round 27: "2026-12-07 05:00:00 .. 2026-12-08 05:00:00 UTC"); in summer too (04:00Z).
    ("1d", [datetime(2026, 12, 7, 5), datetime(2026, 12, 8, 5)], "JPM 1d  2026-12-07 .. 2026-12-08  open"),
    ("1d", [datetime(2026, 6, 1, 4), datetime(2026, 6, 2, 4)], "JPM 1d  2026-06-01 .. 2026-06-02  open"),
    ("1h", [datetime(2026, 12, 7, 15), datetime(2026, 12, 7, 16)],
     "JPM 1h  2026-12-07 15:00:00 .. 2026-12-07 16:00:00 UTC  open"),
])
def test_the_chart_header_names_the_candles_span(monkeypatch, tmp_path, interval, starts, span) -> None:
    reply = quote_service_pb2.GetCandlesResponse(candles=[candle("10.00", "11.00", "10.00", "11.00"),
                                                          candle("11.00", "12.00", "11.00", "12.00")])
    for c, at in zip(reply.candles, starts):
        c.start_time.FromDatetime(at.replace(tzinfo=timezone.utc))
        c.is_final = True

    class Client:
        def call(self, *args, **kwargs):
            return reply

    monkeypatch.setattr(cli_client, "_client", lambda **where: Client())
    done = CliRunner().invoke(main, ["chart", "JPM", "--interval", interval, "--last", "2", "--height", "5",
                                     "--data-dir", str(tmp_path)])
    assert done.exit_code == 0, done.output
    assert done.output.splitlines()[-1].startswith(span), done.output
