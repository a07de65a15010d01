"""The pure domain of the matching service: one limit order book per symbol.

Plain Python only (no gRPC, no protobuf, no I/O); prices in integer ticks.
"""

from matching_svc.domain.book import OrderBook
from matching_svc.domain.events import (
    Accepted,
    Cancelled,
    CancelReason,
    Event,
    Expired,
    Fill,
    Rejected,
    RejectReason,
    Replaced,
    Triggered,
)
from matching_svc.domain.model import (
    TICKS_PER_UNIT,
    Order,
    OrderType,
    Side,
    StpMode,
    TimeInForce,
    from_ticks,
    to_ticks,
)

__all__ = [
    "TICKS_PER_UNIT",
    "Accepted",
    "CancelReason",
    "Cancelled",
    "Event",
    "Expired",
    "Fill",
    "Order",
    "OrderBook",
    "OrderType",
    "RejectReason",
    "Rejected",
    "Replaced",
    "Side",
    "StpMode",
    "TimeInForce",
    "Triggered",
    "from_ticks",
    "to_ticks",
]
