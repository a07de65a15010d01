"""The simulated market's arithmetic, in plain Python: a bounded random walk on the tick
grid and the quotes a liquidity provider shows around it."""
from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import Decimal

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
