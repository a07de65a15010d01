"""What the order book reports.

Every public operation of ``OrderBook`` returns a ``list[Event]`` in the order
things happened. Prices are integer ticks (see ``model.from_ticks``),
quantities integer shares.

Per order id, quantity is conserved: the quantity an order entered with
(``Order.quantity`` on submit, ``Replaced.leaves`` for the new id of a
replace) equals the sum of its fills, plus what rests, plus the ``quantity``
of its ``Cancelled`` / ``Expired`` event, plus ``Replaced.old_leaves`` when it
is replaced.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from matching_svc.domain.model import Side


class CancelReason(StrEnum):
    USER = "USER"
    """``OrderBook.cancel``."""
    IOC_REMAINDER = "IOC_REMAINDER"
    """What an IOC limit order could not fill at once."""
    MARKET_REMAINDER = "MARKET_REMAINDER"
    """What a market order (or triggered stop) could not fill within its collar, after some fills."""
    NO_LIQUIDITY = "NO_LIQUIDITY"
    """A market order (or triggered stop) that could not fill anything within its collar."""
    SELF_TRADE = "SELF_TRADE"
    """Self-trade prevention (taker remainder or resting maker, per ``StpMode``)."""
    FOK_NOT_FILLABLE = "FOK_NOT_FILLABLE"
    """A triggered FOK stop that could not fill entirely (an incoming FOK is ``Rejected`` instead)."""
    REPLACED = "REPLACED"
    """A replace whose new total quantity is not above what the order has already filled."""


class RejectReason(StrEnum):
    INVALID = "INVALID"
    """Fields inconsistent with the order type, non-positive quantity or price, …"""
    DUPLICATE_ORDER_ID = "DUPLICATE_ORDER_ID"
    """The id is already live in this book (resting or pending stop)."""
    UNKNOWN_ORDER = "UNKNOWN_ORDER"
    """Cancel or replace of an id that is not live in this book (never was, or already ended)."""
    FOK_NOT_FILLABLE = "FOK_NOT_FILLABLE"
    """A FOK order that could not be filled entirely at once; the book is untouched."""
    SYMBOL_HALTED = "SYMBOL_HALTED"
    """A new order or a replace while trading in the symbol is halted (``EngineCommand.halt``)."""


@dataclass(slots=True)
class Accepted:
    """The order entered the book's processing; more events for it may follow."""

    order_id: str
    account_id: str


@dataclass(slots=True)
class Fill:
    """One trade, always at the maker's (resting order's) price."""

    maker_order_id: str
    maker_account_id: str
    taker_order_id: str
    taker_account_id: str
    taker_side: Side
    price: int
    quantity: int
    maker_leaves: int
    """What is left of the maker after this fill (0 = the maker is filled)."""
    taker_leaves: int
    """What is left of the taker after this fill (0 = the taker is filled)."""


@dataclass(slots=True)
class Cancelled:
    order_id: str
    account_id: str
    reason: CancelReason
    quantity: int
    """The open quantity that was cancelled."""


@dataclass(slots=True)
class Expired:
    """A DAY order (resting, or a pending stop) expired at the session close."""

    order_id: str
    account_id: str
    quantity: int
    """The open quantity that expired."""


@dataclass(slots=True)
class Rejected:
    """The request was refused; nothing in the book changed."""

    order_id: str
    """The submitted order's id, the id given to ``cancel``, or the *new* id of a replace."""
    account_id: str | None
    """``None`` when the book does not know the order (cancel/replace of an unknown id)."""
    reason: RejectReason
    orig_order_id: str | None = None
    """For a rejected replace: the id of the order it was meant to replace."""


@dataclass(slots=True)
class Replaced:
    """``old_order_id`` ended; ``new_order_id`` took over with ``leaves`` open.

    ``kept_priority``: the new order holds the old one's place in its queue
    (quantity decrease at the same prices). Otherwise the new order went to the
    back, and, for a limit order, was matched again as a new order (its fills
    etc. follow this event).
    """

    old_order_id: str
    new_order_id: str
    account_id: str
    kept_priority: bool
    old_leaves: int
    """The open quantity the old order had when it was replaced."""
    quantity: int
    """The new total quantity (FIX ``OrderQty``: includes what the old order had filled)."""
    leaves: int
    """The new order's open quantity: ``quantity`` minus what was already filled."""
    limit: int | None
    stop: int | None


@dataclass(slots=True)
class Triggered:
    """A pending stop was elected by the last trade price and now acts as a MARKET / LIMIT order."""

    order_id: str
    account_id: str
    stop: int
    collar: int | None = None
    """The price a triggered STOP trades within (None: a STOP_LIMIT, which has its limit): its
    own collar, or for a sell stop the market gapped through, that collar's distance below the
    electing trade."""


Event = Accepted | Fill | Cancelled | Expired | Rejected | Replaced | Triggered
