"""The simulator's optional replay of historical candles (MISSION: "plus optional replay of
historical candles from a CSV file"): a symbol's quotes follow each candle's open, extremes and
close, a jump is taken in moves the price band allows, and the random walk takes over after the
last candle."""
from __future__ import annotations

import asyncio
import random
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from meshkit.symbols import tick_size
from simulator import runner
from simulator.market import Replay, candle_path
from quote_svc.domain.history import ImportedCandle
from stockmesh.common.v1 import common_pb2
from stockmesh.order.v1 import order_pb2

D = Decimal
START = datetime(2024, 3, 4, 14, 30, tzinfo=timezone.utc)


def candle(o: str, h: str, lo: str, c: str, minute: int = 0, symbol: str = "KO") -> ImportedCandle:
    return ImportedCandle(symbol, 60, START + timedelta(minutes=minute), D(o), D(h), D(lo), D(c), 1000, None, None)


def test_a_candle_is_replayed_through_its_open_extremes_and_close():
    up, down = candle("60.00", "63.00", "59.00", "62.00"), candle("62.00", "62.50", "58.00", "58.50")
    assert candle_path(up, 4) == [D("60.00"), D("59.00"), D("63.00"), D("62.00")]  # low first: it closed up
    assert candle_path(down, 4) == [D("62.00"), D("62.50"), D("58.00"), D("58.50")]
    assert candle_path(up, 1) == [D("62.00")]
    seven = candle_path(up, 7)  # half-way points between, on the tick grid
    assert seven == [D("60.00"), D("59.50"), D("59.00"), D("61.00"), D("63.00"), D("62.50"), D("62.00")]
    assert candle_path(candle("0.8751", "0.9", "0.8", "0.85"), 4) == [D("0.8751"), D("0.9000"), D("0.8000"),
                                                                    D("0.8500")]


def test_the_replay_follows_its_candles_in_moves_the_price_band_allows_then_walks_on():
    candles = [candle("62.00", "63.00", "61.50", "62.80"), candle("80.00", "80.00", "79.00", "79.50", minute=1)]
    replay = Replay.of(candles, start=D("62.15"))
    rng = random.Random(7)
    prices = [replay.step(rng) for _ in range(20)]
    assert prices[:4] == [D("62.00"), D("61.50"), D("63.00"), D("62.80")]
    # 62.80 -> 80.00 is 27 %: at most 5 % a quote (order_svc refuses quotes 20 % off the last trade)
    gap = prices[3:prices.index(D("80.00")) + 1]
    assert len(gap) > 5 and all(b - a <= a * D("0.05") for a, b in zip(gap, gap[1:]))
    assert prices[prices.index(D("80.00")):][:4] == [D("80.00"), D("80.00"), D("79.00"), D("79.50")]
    assert all(p == p.quantize(tick_size(p)) for p in prices)
    assert not replay.replaying  # after its last candle: the random walk, from 79.50
    walked = [replay.step(rng) for _ in range(200)]
    assert len(set(walked)) > 1 and all(abs(p - D("79.50")) <= D("79.50") * D("0.15") for p in walked)


def test_a_replay_file_is_read_per_symbol_oldest_first(tmp_path: Path):
    f = tmp_path / "history.csv"
    f.write_text("symbol,start_time,interval,open,high,low,close,volume\n"
                 "KO,2024-03-04T14:31:00Z,1m,61.00,61.00,60.00,60.50,10\n"
                 "AAPL,2024-03-04T14:30:00Z,1m,180.00,181.00,179.00,180.50,10\n"
                 "KO,2024-03-04T14:30:00Z,1m,60.00,61.00,59.00,61.00,10\n")
    got = runner.replay_file(f)
    assert sorted(got) == ["AAPL", "KO"]
    assert [c.open for c in got["KO"]] == [D("60.00"), D("61.00")]


class Stub:
    """order_svc as the simulator's maker and takers see it: every order rests, every cancel
    succeeds; the maker's inner bid and ask of each round are noted."""

    def __init__(self) -> None:
        self.rounds: dict[int, dict[int, D]] = {}
        self.takers: set[int] = set()  # the rounds with a taker's order
        self.n = 0

    @property
    def quotes(self) -> list[tuple[D, D]]:
        return [(r[common_pb2.SIDE_BUY], r[common_pb2.SIDE_SELL]) for _, r in sorted(self.rounds.items()) if len(r) == 2]

    async def PlaceOrder(self, request, metadata=None, timeout=None):
        self.n += 1
        if request.time_in_force == common_pb2.TIME_IN_FORCE_IOC:  # sim-<run>-<SYM>-<n>-t
            self.takers.add(int(request.client_order_id.split("-")[-2]))
            return type("R", (), {"order": order_pb2.Order(order_id=f"o{self.n}", status=common_pb2.ORDER_STATUS_FILLED)})()
        *_, n, side, level = request.client_order_id.split("-")  # sim-<run>-<SYM>-<n>-<side>-<level>
        if request.time_in_force == common_pb2.TIME_IN_FORCE_GTC and level == "0":
            self.rounds.setdefault(int(n), {})[int(side)] = D(request.limit_price)
        return type("R", (), {"order": order_pb2.Order(order_id=f"o{self.n}", status=common_pb2.ORDER_STATUS_NEW)})()

    async def CancelOrder(self, request, metadata=None, timeout=None):
        return None

    async def ListOrders(self, request, metadata=None, timeout=None):
        return type("R", (), {"orders": [], "next_page_token": ""})()


async def simulated(tmp_path: Path, monkeypatch, seed: int, candles: list, rounds: int) -> Stub:
    """KO's liquidity provider and takers, replaying `candles` from 62.15, for `rounds` rounds
    (quoted on both sides) against Stub."""
    sim = runner.Simulator("unused:0", tmp_path, seed=seed, tick_seconds=0.001, replay={"KO": candles})
    monkeypatch.setattr(sim, "md", lambda account: ())
    stub = Stub()
    task = asyncio.create_task(sim._symbol(stub, "KO", D("62.15")))
    try:
        for _ in range(500):
            if len(stub.quotes) >= rounds:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return stub


async def test_the_simulator_quotes_around_the_replayed_prices(tmp_path: Path, monkeypatch):
    candles = [candle("62.00", "64.00", "61.00", "63.50")]
    stub = await simulated(tmp_path, monkeypatch, 1, candles, 6)
    mids = [(b + a) / 2 for b, a in stub.quotes[:4]]
    # a quote a few ticks around each point of the candle: 62.00, 61.00, 64.00, 63.50
    assert [round(m) for m in mids] == [62, 61, 64, 64], stub.quotes
    assert all(abs(m - p) <= D("0.03") for m, p in zip(mids, candle_path(candles[0], 4))), stub.quotes


async def test_a_jump_trades_at_each_of_its_quotes(tmp_path: Path, monkeypatch):
    """The price band is around the last trade: quotes that jump 5 % a round with no trade
    between would soon be refused, so every round of a jump has a taker's trade."""
    stub = await simulated(tmp_path, monkeypatch, 3, [candle("80.00", "80.00", "80.00", "80.00")], 12)
    mids = [(n, (r[common_pb2.SIDE_BUY] + r[common_pb2.SIDE_SELL]) / 2) for n, r in sorted(stub.rounds.items())
            if len(r) == 2]
    arrived = next(i for i, (_, mid) in enumerate(mids) if mid > D("79.9"))
    jump = [n for n, _ in mids[:arrived]]
    assert len(jump) >= 5 and set(jump) <= stub.takers, (jump, sorted(stub.takers))


async def test_quotes_never_drift_a_tenth_from_the_last_trade(tmp_path: Path, monkeypatch):
    """Steps under the jump's 5 %, one after the other, add up: without a trade among them the
    quotes would leave order_svc's band around the last trade (20 %) and nothing could trade."""
    climb = [candle(f"{62 + 2 * i}.00", f"{62 + 2 * i}.00", f"{62 + 2 * i}.00", f"{62 + 2 * i}.00", minute=i)
             for i in range(12)]  # +3 % a step, 40 % in all

    class NoChance(random.Random):  # no taker comes by chance: only the ones the band needs
        def random(self) -> float:
            return 0.9
    monkeypatch.setattr(runner.random, "Random", NoChance)
    stub = await simulated(tmp_path, monkeypatch, 5, climb, 44)
    traded = D("62.15")
    for n, r in sorted(stub.rounds.items()):
        if len(r) == 2:
            mid = (r[common_pb2.SIDE_BUY] + r[common_pb2.SIDE_SELL]) / 2
            assert abs(mid - traded) <= traded * D("0.15"), (n, mid, traded)
        if n in stub.takers:
            traded = mid


@pytest.mark.parametrize("steps", ["0", "-1", "many"])
def test_the_simulator_refuses_replay_steps_below_one(tmp_path: Path, steps: str):
    import os
    import subprocess
    import sys

    env = {**os.environ, "STOCKMESH_ENDPOINT": "127.0.0.1:1", "STOCKMESH_DATA_DIR": str(tmp_path),
           "SIM_REPLAY_STEPS": steps}
    done = subprocess.run([sys.executable, "-m", "simulator"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "SIM_REPLAY_STEPS" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_up_checks_the_replay_file_before_it_starts_anything(tmp_path: Path, monkeypatch):
    from click.testing import CliRunner

    from meshkit import cli
    from meshkit.launcher import mesh

    started = []
    monkeypatch.setattr(mesh, "up", lambda opts: started.append(opts) or 0)
    bad = tmp_path / "bad.csv"
    bad.write_text("symbol,start_time,interval,open,high,low,close,volume\nNOPE,2024-03-04T14:30:00Z,1m,1,1,1,1,1\n")
    done = CliRunner().invoke(cli.main, ["up", "--data-dir", str(tmp_path / "d"), "--replay", str(bad)])
    assert done.exit_code == 2 and "line 2: unknown symbol 'NOPE'" in done.output, done.output
    empty = tmp_path / "empty.csv"
    empty.write_text("symbol,start_time,interval,open,high,low,close,volume\n")
    done = CliRunner().invoke(cli.main, ["up", "--data-dir", str(tmp_path / "d"), "--replay", str(empty)])
    assert done.exit_code == 2 and "holds no candles" in done.output, done.output
    good = tmp_path / "good.csv"
    good.write_text("symbol,start_time,interval,open,high,low,close,volume\nKO,2024-03-04T14:30:00Z,1m,62,63,61,62.5,1\n")
    done = CliRunner().invoke(cli.main, ["up", "--data-dir", str(tmp_path / "d"), "--no-simulator", "--replay", str(good)])
    assert done.exit_code == 2 and "--no-simulator" in done.output, done.output
    assert not started
    done = CliRunner().invoke(cli.main, ["up", "--data-dir", str(tmp_path / "d"), "--replay", str(good),
                                         "--replay-steps", "6"])
    assert done.exit_code == 0, done.output
    [opts] = started
    assert (opts.replay, opts.replay_steps) == (good, 6)
