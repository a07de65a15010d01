from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True)
class Deposit:
    account_id: str
    amount: Decimal
    idempotency_key: str


@dataclass(frozen=True)
class Withdraw:
    account_id: str
    amount: Decimal
    idempotency_key: str


@dataclass(frozen=True)
class CreditShares:
    """Internal (tests, simulator funding): shares enter an account from outside."""
    account_id: str
    symbol: str
    quantity: Decimal
    idempotency_key: str
    cost_price: Decimal = Decimal(0)


@dataclass(frozen=True)
class PlaceHold:
    hold_id: str
    account_id: str
    order_id: str
    asset: str  # "USD" or a symbol
    amount: Decimal
    client_key: str | None = None  # at most one hold of the account carries it (migration 0012)
    # The key kept for this very order without a hold (refused before, rejected before any hold)
    # answers the hold: ClientKeyKept, nothing held (migration 0023); else balances are checked.
    answer_kept_key: bool = False


@dataclass(frozen=True)
class CaptureHold:
    hold_id: str
    capture_id: str
    amount: Decimal
    counter_account_id: str = ""  # empty: the clearing counter-account


@dataclass(frozen=True)
class ReleaseHold:
    hold_id: str


@dataclass(frozen=True)
class TransferHold:
    """Phase 1 of moving an order's hold to the order replacing it (see HoldTransfer)."""
    from_hold_id: str
    to_hold_id: str
    order_id: str
    account_id: str
    asset: str
    unit_amount: Decimal
    reserve: Decimal
    client_key: str | None = None  # the replacing order's client_order_id, kept for it (migration 0023)


@dataclass(frozen=True)
class RegisterClientKey:
    """An order with no hold of its own keeps its client key (migration 0023)."""
    account_id: str
    client_key: str
    order_id: str
