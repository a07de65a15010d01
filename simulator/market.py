"""The simulated market's arithmetic, in plain Python: a bounded random walk on the tick
grid (or a replay of historical candles), and the quotes a liquidity provider shows around it."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from typing import Iterable, Protocol

from meshkit.symbols import tick_size
from stockmesh.common.v1 import common_pb2

HOT = frozenset({"AAPL", "TSLA"})


@dataclass
class Walk:
    """A random walk of a price on its tick grid, kept within ±`bound` of where it started
    (so that quotes stay inside order_svc's price band)."""

    start: Decimal
    price: Decimal
    volatility: float = 0.0008
    bound: Decimal = Decimal("0.15")

    @classmethod
    def at(cls, price: Decimal) -> "Walk":
        return cls(start=price, price=price)

    def step(self, rng: random.Random) -> Decimal:
        tick = tick_size(self.price)
        move = self.price * Decimal(str(round(rng.gauss(0, self.volatility), 6)))
        ticks = int(move / tick)
        low, high = self.start * (1 - self.bound), self.start * (1 + self.bound)
        candidate = self.price + ticks * tick
        if low <= candidate <= high and candidate > 0:
            self.price = candidate
        return self.price


class Candle(Protocol):
    """What a replay reads of a historical candle (quote_svc.domain.history.ImportedCandle)."""
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal


def on_tick(price: Decimal) -> Decimal:
    """`price` rounded half-up to its tick (never to zero)."""
    tick = tick_size(price)
    return max(tick, price.quantize(tick, rounding=ROUND_HALF_UP))


def candle_path(c: Candle, steps: int) -> list[Decimal]:
    """The prices a candle is replayed through in `steps` ticks: its open, the extreme away
    from its close, the other extreme, its close (open -> low -> high -> close for a candle that
    closed up or flat, open -> high -> low -> close for one that closed down), sampled evenly
    along that line; one step is its close alone. On the tick grid."""
    points = [c.open, c.low, c.high, c.close] if c.close >= c.open else [c.open, c.high, c.low, c.close]
    if steps == 1:
        return [on_tick(c.close)]
    out = []
    for k in range(steps):
        t = Decimal(3 * k) / Decimal(steps - 1)
        seg = min(int(t), 2)
        a, b = points[seg], points[seg + 1]
        out.append(on_tick(a + (b - a) * (t - seg)))
    return out


@dataclass
class Replay:
    """A price that follows historical candles, `steps` ticks each (candle_path), in the order
    given. It moves at most `max_move` of itself in one tick: a jump (the first candle far from
    where the market is, a gap between two candles) is taken over several, because order_svc
    refuses quotes more than 20 % off the last trade (and the simulator trades at each of
    them, `jumping`, so that the last trade follows). After the last candle it walks on from
    where it is (Walk)."""

    price: Decimal
    targets: list[Decimal]
    max_move: Decimal = Decimal("0.05")
    walk: Walk | None = field(default=None, repr=False)
    at: int = 0  # the next target
    jumping: bool = False  # the last step was cut short at `max_move`: the market must trade there

    @classmethod
    def of(cls, candles: Iterable[Candle], start: Decimal, steps: int = 4) -> "Replay":
        return cls(price=start, targets=[p for c in candles for p in candle_path(c, steps)])

    @property
    def replaying(self) -> bool:
        return self.walk is None

    def step(self, rng: random.Random) -> Decimal:
        if self.walk is not None:
            return self.walk.step(rng)
        if self.at >= len(self.targets):
            self.walk, self.jumping = Walk.at(self.price), False
            return self.walk.step(rng)
        target, limit = self.targets[self.at], self.price * self.max_move
        self.jumping = abs(target - self.price) > limit
        if not self.jumping:
            self.price = target
            self.at += 1
        else:
            tick = tick_size(self.price)
            move = max(tick, limit.quantize(tick, rounding=ROUND_DOWN))  # never past the limit but by a tick
            self.price = on_tick(self.price + (move if target > self.price else -move))
        return self.price


class PricePath(Protocol):
    def step(self, rng: random.Random) -> Decimal: ...


@dataclass(frozen=True)
class Quote:
    bid: Decimal
    ask: Decimal
    bid_size: int
    ask_size: int


def quote_around(mid: Decimal, rng: random.Random) -> Quote:
    """A two-sided quote a few ticks around `mid`, bid strictly below ask."""
    tick = tick_size(mid)
    half = rng.randint(1, 3) * tick
    bid = mid - half
    if bid <= 0:
        bid = tick
    return Quote(bid=bid, ask=bid + 2 * half, bid_size=rng.randint(1, 3) * 100, ask_size=rng.randint(1, 3) * 100)


BUY, SELL = common_pb2.SIDE_BUY, common_pb2.SIDE_SELL
OUTER_TICKS, OUTER_SIZE = 3, 5  # the outer level: this many ticks further out, this many times deeper


def levels(q: Quote, tick: Decimal) -> dict[int, list[tuple[Decimal, int]]]:
    """Per side, the (price, size) orders a liquidity provider rests for quote `q`: the quote
    itself and, further out, a deeper level (a bid never at or below zero)."""
    outer_bid = q.bid - OUTER_TICKS * tick
    return {BUY: [(q.bid, q.bid_size)] + ([(outer_bid, q.bid_size * OUTER_SIZE)] if outer_bid > 0 else []),
            SELL: [(q.ask, q.ask_size), (q.ask + OUTER_TICKS * tick, q.ask_size * OUTER_SIZE)]}
