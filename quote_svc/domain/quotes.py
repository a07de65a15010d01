"""The latest quote of a symbol, and how a market-data event moves it. Plain Python."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal


@dataclass(frozen=True)
class MarketData:
    """One market-data event of the engine (`md.<SYMBOL>`), as plain data."""

    symbol: str
    sequence: int
    time: datetime
    bid: Decimal | None
    bid_size: int
    ask: Decimal | None
    ask_size: int
    last: Decimal | None
    volume: int
    trade_price: Decimal | None = None  # set when the event is a trade
    trade_quantity: int = 0
    halted: bool = False

    @property
    def is_trade(self) -> bool:
        return self.trade_price is not None and self.trade_quantity > 0


@dataclass(frozen=True)
class Quote:
    symbol: str
    bid: Decimal | None
    bid_size: int
    ask: Decimal | None
    ask_size: int
    last: Decimal | None
    last_size: int
    volume: int
    sequence: int
    time: datetime
    halted: bool = False


def visible(q: Quote) -> tuple:
    """What a client sees of a quote: everything but its sequence and time."""
    return q.bid, q.bid_size, q.ask, q.ask_size, q.last, q.last_size, q.volume, q.halted


def next_quote(current: Quote | None, ev: MarketData) -> Quote | None:
    """The quote after `ev`, or None when `ev` is not newer than `current` (a repeat or a
    replay of an older event: the md sequence of a symbol only grows).

    An event that is not a trade keeps the last trade's size (the event carries the last
    price and the session volume, not the last size)."""
    if current is not None and ev.sequence <= current.sequence:
        return None
    if ev.is_trade:
        last, last_size = ev.trade_price, ev.trade_quantity
    else:
        last = ev.last if ev.last is not None else (current.last if current else None)
        last_size = current.last_size if current is not None and current.last == last else 0
    return Quote(symbol=ev.symbol, bid=ev.bid, bid_size=ev.bid_size, ask=ev.ask, ask_size=ev.ask_size,
                 last=last, last_size=last_size, volume=ev.volume, sequence=ev.sequence, time=ev.time,
                 halted=ev.halted)
