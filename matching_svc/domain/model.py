"""Orders, their enumerations, and the tick arithmetic of the order book.

Prices on the hot path are integer *ticks* (one tick = 0.0001 of the quote
currency) and quantities are integer shares; binary floats never appear.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

TICKS_PER_UNIT = 10_000
"""One tick is 0.0001: ``price_ticks = Decimal price × 10_000``."""

_TICK_EXPONENT = 4


def to_ticks(price: Decimal) -> int:
    """Convert an exact decimal price to integer ticks.

    Raises ``ValueError`` for a price that is not a whole number of ticks
    (e.g. ``Decimal("1.00005")``) or is not finite, ``TypeError`` for anything
    that is not a ``Decimal`` or ``int`` (floats are refused on purpose).
    """
    if isinstance(price, bool) or not isinstance(price, (Decimal, int)):
        raise TypeError(f"price must be a Decimal, not {type(price).__name__}")
    if isinstance(price, int):
        return price * TICKS_PER_UNIT
    if not price.is_finite():
        raise ValueError(f"price {price} is not finite")
    scaled = price.scaleb(_TICK_EXPONENT)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"price {price} is not a multiple of the tick 0.0001")
    return int(scaled)


def from_ticks(ticks: int) -> Decimal:
    """Convert integer ticks back to an exact ``Decimal`` with four decimals."""
    return Decimal(ticks).scaleb(-_TICK_EXPONENT)


class Side(StrEnum):
    BUY = "BUY"
    SELL = "SELL"


class OrderType(StrEnum):
    MARKET = "MARKET"
    LIMIT = "LIMIT"
    STOP = "STOP"
    """A stop (market) order: off-book until triggered, then a MARKET order."""
    STOP_LIMIT = "STOP_LIMIT"
    """Off-book until triggered, then a LIMIT order."""


class TimeInForce(StrEnum):
    DAY = "DAY"
    GTC = "GTC"
    IOC = "IOC"
    FOK = "FOK"


class StpMode(StrEnum):
    """What self-trade prevention does when a taker meets a maker of the same account."""

    CANCEL_NEWEST = "CANCEL_NEWEST"
    """Cancel the taker's remainder; the resting order stays."""
    CANCEL_OLDEST = "CANCEL_OLDEST"
    """Cancel the resting order and continue matching."""
    CANCEL_BOTH = "CANCEL_BOTH"
    """Cancel the resting order and the taker's remainder."""


@dataclass(slots=True, eq=False)
class Order:
    """An order as submitted to the book, and its live state while in it.

    The caller fills in the first nine fields and ``trading_day``; ``filled``, ``leaves``
    and ``seq`` belong to the book, which sets them on ``submit`` and updates them
    in place afterwards (so do not reuse an ``Order`` object for two
    submissions).

    Field rules, checked by ``OrderBook.submit`` (``Rejected(INVALID)``):

    ========== ======== ======== ========
    type       limit    stop     collar
    ========== ======== ======== ========
    MARKET     None     None     required
    LIMIT      required None     None
    STOP       None     required required
    STOP_LIMIT required required None
    ========== ======== ======== ========

    ``collar`` is the worst price a market order may trade at: a market buy
    never trades above it, a market sell never below it.
    """

    order_id: str
    account_id: str
    side: Side
    type: OrderType
    tif: TimeInForce
    quantity: int
    limit: int | None = None
    stop: int | None = None
    collar: int | None = None
    filled: int = 0
    leaves: int = 0
    seq: int = 0
    # The trading day (YYYY-MM-DD) a DAY order belongs to: a session close expires the DAY
    # orders of its day and earlier ones. "" (unknown) sorts first: every close expires it.
    trading_day: str = ""

    def to_dict(self) -> dict:
        """Plain JSON-able form, as used in snapshots."""
        return {
            "order_id": self.order_id,
            "account_id": self.account_id,
            "side": self.side.value,
            "type": self.type.value,
            "tif": self.tif.value,
            "quantity": self.quantity,
            "limit": self.limit,
            "stop": self.stop,
            "collar": self.collar,
            "filled": self.filled,
            "leaves": self.leaves,
            "seq": self.seq,
            "trading_day": self.trading_day,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Order:
        return cls(
            order_id=data["order_id"],
            account_id=data["account_id"],
            side=Side(data["side"]),
            type=OrderType(data["type"]),
            tif=TimeInForce(data["tif"]),
            quantity=data["quantity"],
            limit=data["limit"],
            stop=data["stop"],
            collar=data["collar"],
            filled=data["filled"],
            leaves=data["leaves"],
            seq=data["seq"],
            trading_day=data.get("trading_day", ""),  # absent from snapshots taken before it was kept
        )
