"""The ledger's rules, in plain Python: balanced journal entries, exact amounts, and
balances whose available part never goes below zero.

The database enforces the same rules (a deferred constraint trigger for balance, CHECK
constraints on balances); this module is what the service layer reasons with and what the
unit tests pin down.
"""
from __future__ import annotations

import re
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_CEILING, Decimal
from enum import Enum

from meshkit.errors import AlreadyExists, FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from meshkit.money import CASH, amount_text
from meshkit.symbols import CENT

EXTERNAL = "$external"  # counter-account of money or shares entering or leaving the brokerage
CLEARING = "$clearing"  # default counter-account of hold captures (the street side of a trade)
# Cash holds carry up to four decimal places: a limit price has up to four (sub-penny prices
# below $1) and a quantity is whole, so limit price x quantity is exact at four places, the
# scale of every ledger column. Deposits and withdrawals stay at cents.
CASH_HOLD_PLACES = 4
_SYMBOL = re.compile(r"^[A-Z][A-Z0-9.\-]{0,11}$")


class UnbalancedEntry(ValueError):
    """A journal entry whose postings do not sum to zero per asset."""


class InsufficientFunds(FailedPrecondition):
    default_reason = "INSUFFICIENT_FUNDS"


class InsufficientShares(FailedPrecondition):
    default_reason = "INSUFFICIENT_SHARES"


# The largest balance a book holds (numeric(24, 4), migration 0001).
MAX_BALANCE = Decimal("99999999999999999999.9999")


class BalanceLimit(FailedPrecondition):
    """A movement would take a balance past MAX_BALANCE: refused, nothing moved (round 24
    explorer: a deposit onto a balance near it was INTERNAL, the column's overflow)."""
    default_reason = "BALANCE_LIMIT"

    def __init__(self, account_id: str) -> None:
        super().__init__(f"this would take the account's balance past {MAX_BALANCE}, the largest the ledger keeps; "
                         "nothing was moved", metadata={"accountId": account_id, "maxBalance": str(MAX_BALANCE)})


class DuplicateIdempotencyKey(AlreadyExists):
    default_reason = "DUPLICATE_IDEMPOTENCY_KEY"


class DuplicateHoldId(AlreadyExists):
    default_reason = "DUPLICATE_HOLD_ID"


class DuplicateClientKey(AlreadyExists):
    """Another hold of the account carries the client key asked for (its order's
    client_order_id, used for another order)."""
    default_reason = "DUPLICATE_CLIENT_KEY"


@dataclass(frozen=True)
class ClientKeyHolder:
    """What carries a client key of an account: a hold (its id and status), or an order that
    has no hold of its own (a placement refused, an order rejected before its hold, a
    replacement: migration 0023), named alone (hold_id and status empty)."""
    order_id: str
    hold_id: str = ""
    status: str = ""


def client_key_taken(account_id: str, client_key: str, holder: ClientKeyHolder) -> DuplicateClientKey:
    """The refusal of a client key that another order of the account has: metadata holdId,
    orderId and holdStatus of its holder (holdId and holdStatus empty without a hold)."""
    by = f"hold {holder.hold_id} (order {holder.order_id})" if holder.hold_id else f"order {holder.order_id} (no hold)"
    return DuplicateClientKey(f"client key {client_key!r} of {account_id} is carried by {by}",
                              metadata={"clientKey": client_key, "holdId": holder.hold_id,
                                        "orderId": holder.order_id, "holdStatus": holder.status})


class ClientKeyKept(AlreadyExists):
    """The client key asked for was kept for this very order without a hold (a placement of it
    refused for want of cash or shares, or rejected before any hold): that request was answered
    before, and nothing is held now (PlaceHold's answer_kept_key)."""
    default_reason = "CLIENT_KEY_KEPT"


def client_key_kept(account_id: str, client_key: str, order_id: str) -> ClientKeyKept:
    return ClientKeyKept(f"client key {client_key!r} of {account_id} was kept for order {order_id} without a hold: "
                         "that request was answered before; nothing held",
                         metadata={"clientKey": client_key, "orderId": order_id})


class DuplicateCaptureId(AlreadyExists):
    default_reason = "DUPLICATE_CAPTURE_ID"


class HoldNotFound(NotFound):
    default_reason = "HOLD_NOT_FOUND"


class HoldExceeded(FailedPrecondition):
    default_reason = "HOLD_EXCEEDED"


class HoldResolved(FailedPrecondition):
    default_reason = "HOLD_RESOLVED"


def insufficient(asset: str, available: Decimal, requested: Decimal, *,
                 unsettled: Decimal = Decimal(0)) -> FailedPrecondition:
    """The refusal for a book short of `requested`: funds for cash, shares for a symbol. Cash
    owed to the account by sales not yet settled (`unsettled`) is named, since the account's
    total shows it and it cannot be used yet."""
    cls = InsufficientFunds if asset == CASH else InsufficientShares
    what = "cash" if asset == CASH else f"{asset} shares"
    have, want = amount_text(asset, available), amount_text(asset, requested)
    message, metadata = f"available {what} {have} is less than {want}", {"asset": asset, "available": have,
                                                                        "requested": want}
    if unsettled > 0:
        owed = amount_text(CASH, unsettled)
        message += f" (sale proceeds of {owed} are not available until they settle)"
        metadata["unsettled"] = owed
    return cls(message, metadata=metadata)


def is_symbol(asset: str) -> bool:
    return bool(_SYMBOL.match(asset)) and asset != CASH


def amount_places(asset: str) -> int:
    """Decimal places an amount of `asset` may carry: cash holds 4, shares are whole."""
    return CASH_HOLD_PLACES if asset == CASH else 0


def check_amount(asset: str, amount: Decimal, field: str = "amount") -> None:
    """A positive, finite amount at the asset's scale; else INVALID_ARGUMENT naming `field`."""
    if not isinstance(amount, Decimal):
        raise TypeError("amounts are Decimals, never floats")
    places = amount_places(asset)
    if not amount.is_finite() or amount <= 0:
        raise InvalidArgument([FieldViolation(field, "must be positive")])
    if amount != amount.quantize(Decimal(1).scaleb(-places)):
        text = "must be a whole number of shares" if places == 0 else f"must have at most {places} decimal places"
        raise InvalidArgument([FieldViolation(field, text)])


@dataclass(frozen=True)
class BookRef:
    owner: str
    asset: str

    @property
    def is_customer(self) -> bool:
        return not self.owner.startswith("$")


@dataclass(frozen=True)
class Posting:
    book: BookRef
    amount: Decimal

    def __post_init__(self) -> None:
        if not isinstance(self.amount, Decimal):
            raise TypeError("posting amounts are Decimals, never floats")
        if self.amount == 0 or not self.amount.is_finite():
            raise ValueError("a posting moves a finite, non-zero amount")


@dataclass(frozen=True)
class JournalEntry:
    entry_id: uuid.UUID
    kind: str
    account_id: str
    asset: str
    amount: Decimal
    postings: tuple[Posting, ...]
    idempotency_key: str | None = None
    description: str = ""
    reference: str | None = None

    def __post_init__(self) -> None:
        if len(self.postings) < 2:
            raise UnbalancedEntry("a journal entry needs at least two postings")
        sums: dict[str, Decimal] = defaultdict(Decimal)
        for p in self.postings:
            sums[p.book.asset] += p.amount
        off = {a: s for a, s in sums.items() if s != 0}
        if off:
            raise UnbalancedEntry(f"postings do not balance: {off}")


def _customer(account_id: str) -> str:
    """A deposit or withdrawal moves a customer's cash or shares, never one of the brokerage's
    own books, which skip the balance check (no caller may act as one: meshkit.auth refuses
    such a token's subject; this is the ledger's own guard)."""
    if not BookRef(account_id, CASH).is_customer:
        raise FailedPrecondition(f"{account_id!r} is one of the brokerage's own books, not a customer account",
                                 reason="SYSTEM_BOOK")
    return account_id


def deposit_entry(account_id: str, amount: Decimal, key: str) -> JournalEntry:
    """Cash comes in: the customer's USD book is credited, the external counter-account debited."""
    account_id = _customer(account_id)
    return JournalEntry(
        entry_id=uuid.uuid4(), kind="DEPOSIT", account_id=account_id, asset=CASH, amount=amount,
        idempotency_key=key, description="Deposit",
        postings=(Posting(BookRef(account_id, CASH), amount), Posting(BookRef(EXTERNAL, CASH), -amount)),
    )


def withdrawal_entry(account_id: str, amount: Decimal, key: str) -> JournalEntry:
    account_id = _customer(account_id)
    return JournalEntry(
        entry_id=uuid.uuid4(), kind="WITHDRAWAL", account_id=account_id, asset=CASH, amount=amount,
        idempotency_key=key, description="Withdrawal",
        postings=(Posting(BookRef(account_id, CASH), -amount), Posting(BookRef(EXTERNAL, CASH), amount)),
    )


def share_deposit_entry(account_id: str, symbol: str, quantity: Decimal, key: str) -> JournalEntry:
    """Shares come in (a transfer in, or simulator funding), against the symbol's external book."""
    account_id = _customer(account_id)
    return JournalEntry(
        entry_id=uuid.uuid4(), kind="SHARE_DEPOSIT", account_id=account_id, asset=symbol, amount=quantity,
        idempotency_key=key, description=f"Deposit of {quantity} {symbol}",
        postings=(Posting(BookRef(account_id, symbol), quantity), Posting(BookRef(EXTERNAL, symbol), -quantity)),
    )


@dataclass(frozen=True)
class FillMemo:
    """What a trade's captures say on both accounts' statements: the fill's id (which both
    sides know: it is their OrderUpdate's fill_id) and "3 AAPL at 187.25"; and the fill's
    quantity and price, which each side's hold counts (Hold.count_fill)."""
    fill_id: str
    trade: str
    quantity: int = 0
    price: Decimal = Decimal(0)


def capture_entry(hold: "Hold", amount: Decimal, counter_account_id: str, fill: FillMemo | None = None) -> JournalEntry:
    """What a capture posts: the held asset leaves the hold's book for the counter-account.

    A trade's capture (`fill`) is a FILL entry that names the fill, never the order whose hold
    it captures: its postings are on both sides' statements (the seller's shares arrive in the
    buyer's book), and one side's order id is no business of the other's."""
    if fill is not None:
        kind, reference, description = "FILL", fill.fill_id, fill.trade
    else:
        kind, reference = "HOLD_CAPTURE", hold.order_id
        description = f"Capture of {amount_text(hold.asset, amount)} {hold.asset} held for order {hold.order_id}"
    return JournalEntry(
        entry_id=uuid.uuid4(), kind=kind, account_id=hold.account_id, asset=hold.asset, amount=amount,
        reference=reference, description=description,
        postings=(Posting(BookRef(hold.account_id, hold.asset), -amount),
                  Posting(BookRef(counter_account_id, hold.asset), amount)),
    )


def statement_line(kind: str, asset: str, amount: Decimal, description: str, own: bool,
                   settled: bool | None) -> str:
    """How a line of the account's statement reads. A trade's lines (FILL, and PROCEEDS: a
    sale's proceeds, owed until settlement) say which way it went from the account's side: it
    bought when shares came in or cash went out. A capture of another account's hold (trade
    lines from before FILL entries) says only what moved: its text names the other order."""
    if kind in ("FILL", "PROCEEDS"):
        line = f"{'Bought' if (amount > 0) != (asset == CASH) else 'Sold'} {description}"
        if kind == "PROCEEDS":
            line += ": proceeds, settled" if settled else ": proceeds, unsettled until settlement"
        return line
    if not own:
        return f"{'Received' if amount > 0 else 'Delivered'} {amount_text(asset, abs(amount))} {asset} in a trade"
    return description


@dataclass
class Balance:
    """A customer book's balance: posted (everything it owns) and held (reserved by orders)."""

    posted: Decimal = Decimal(0)
    held: Decimal = Decimal(0)

    @property
    def available(self) -> Decimal:
        return self.posted - self.held

    def apply(self, amount: Decimal) -> None:
        """Post `amount`; a debit beyond what is available is refused and changes nothing."""
        if self.posted + amount - self.held < 0:
            raise insufficient(CASH, self.available, -amount)
        self.posted += amount

    def hold(self, asset: str, amount: Decimal) -> None:
        """Reserve `amount`; refused (changing nothing) when less than that is available."""
        if self.available < amount:
            raise insufficient(asset, self.available, amount)
        self.held += amount

    def capture(self, amount: Decimal) -> None:
        """A held amount leaves the book: posted and held both drop, available is unchanged."""
        assert 0 < amount <= self.held
        self.posted -= amount
        self.held -= amount

    def release(self, amount: Decimal) -> None:
        assert 0 <= amount <= self.held
        self.held -= amount


@dataclass(frozen=True)
class CashBalance:
    total: Decimal
    available: Decimal
    held: Decimal
    settled: Decimal
    unsettled: Decimal

    @classmethod
    def of(cls, posted: Decimal, held: Decimal, unsettled: Decimal = Decimal(0)) -> "CashBalance":
        """`posted` is the settled cash in the account's book; sale proceeds owed until
        settlement count towards the total but cannot be withdrawn or spent yet."""
        return cls(total=posted + unsettled, available=posted - held, held=held,
                   settled=posted, unsettled=unsettled)


# The kinds of entry a customer's request makes (Deposit, Withdraw). Their idempotency keys
# share one space per account: a key names one request, whatever its kind, so a Withdraw
# reusing a Deposit's key is that deposit's key reused, not a new request. The ledger's own
# keyed entries (SHARE_DEPOSIT, SETTLEMENT 'settle:<fill>') keep a space per kind, out of a
# customer's reach.
REQUEST_KINDS = ("DEPOSIT", "WITHDRAWAL")


def key_kinds(kind: str) -> tuple[str, ...]:
    """The kinds of entry whose idempotency keys an entry of `kind` shares."""
    return REQUEST_KINDS if kind in REQUEST_KINDS else (kind,)


@dataclass(frozen=True)
class KeyHolder:
    """The entry that already holds an idempotency key."""
    kind: str
    amount: Decimal
    asset: str


def same_request(existing: KeyHolder, entry: JournalEntry) -> bool:
    """A retried key must be the same request: the same kind, the same amount (compared
    exactly: 10 == 10.00) of the same asset."""
    return (existing.kind, existing.amount, existing.asset) == (entry.kind, entry.amount, entry.asset)


class HoldStatus(str, Enum):
    PENDING = "PENDING"
    CAPTURED = "CAPTURED"  # resolved: everything captured
    RELEASED = "RELEASED"  # resolved: what was left released


@dataclass
class Hold:
    """A two-phase reservation of one book (TigerBeetle's pending transfer).

    It is captured, in part or in whole, many times; what is left is released. It resolves
    at most once: CAPTURED as soon as everything is captured, RELEASED when the rest is
    released. A resolved hold never changes again.
    """

    hold_id: str
    account_id: str
    order_id: str
    asset: str
    amount: Decimal
    captured: Decimal = Decimal(0)
    released: Decimal = Decimal(0)
    status: HoldStatus = HoldStatus.PENDING
    created_at: datetime | None = None
    resolved_at: datetime | None = None
    # The fills of its order the ledger has applied against it (shares, and Σ price × quantity),
    # those of the orders its order replaced included (carried by each completed transfer, as
    # order_svc's filled_quantity and FIX's CumQty): what GetPortfolio lists its order with,
    # read with the hold rather than summed from every fill on every call (round 26 review).
    filled: int = 0
    notional: Decimal = Decimal(0)

    @classmethod
    def new(cls, hold_id: str, account_id: str, order_id: str, asset: str, amount: Decimal) -> "Hold":
        check_amount(asset, amount)
        return cls(hold_id=hold_id, account_id=account_id, order_id=order_id, asset=asset, amount=amount)

    def count_fill(self, fill: FillMemo) -> None:
        """A fill of its order, applied: counted once, with the fill's capture of it (or alone,
        for a buy's fill worth less than a cent, which captures no cash)."""
        self.filled += fill.quantity
        self.notional += fill.price * fill.quantity

    @property
    def remaining(self) -> Decimal:
        return self.amount - self.captured - self.released

    @property
    def is_resolved(self) -> bool:
        return self.status is not HoldStatus.PENDING

    def same_request(self, other: "Hold") -> bool:
        """A retried PlaceHold carries the same parameters (amounts compared exactly)."""
        return (self.account_id, self.order_id, self.asset, self.amount) == (
            other.account_id, other.order_id, other.asset, other.amount)

    def capture(self, amount: Decimal) -> None:
        """Capture `amount` of what is still held; resolves the hold when nothing is left."""
        check_amount(self.asset, amount)
        if self.is_resolved:
            raise HoldResolved(f"hold {self.hold_id} is already {self.status.value.lower()}",
                               metadata={"holdId": self.hold_id, "status": self.status.value})
        if amount > self.remaining:
            left, want = amount_text(self.asset, self.remaining), amount_text(self.asset, amount)
            raise HoldExceeded(f"capture of {want} exceeds the {left} still held by hold {self.hold_id}",
                               metadata={"holdId": self.hold_id, "remaining": left, "requested": want})
        self.captured += amount
        if self.remaining == 0:
            self.status = HoldStatus.CAPTURED

    def release(self) -> Decimal:
        """Release what is left and resolve; returns the amount released. Releasing a resolved
        hold (released, or captured in full) changes nothing and returns 0."""
        if self.is_resolved:
            return Decimal(0)
        left = self.remaining
        self.released += left
        self.status = HoldStatus.RELEASED
        return left


class TransferPending(FailedPrecondition):
    default_reason = "HOLD_TRANSFER_PENDING"


class TransferStatus(str, Enum):
    PENDING = "PENDING"  # recorded, reserve held, waiting for the engine
    COMPLETED = "COMPLETED"  # the engine replaced the order: the new hold is open
    CANCELLED = "CANCELLED"  # the engine refused: the reserve was released


def reserve_hold_id(to_hold_id: str) -> str:
    return f"{to_hold_id}:reserve"


@dataclass
class HoldTransfer:
    """A hold moving from a replaced order to the order replacing it, in two phases.

    Prepared when the customer asks: `reserve` more of the book is held (its own hold) on top
    of the old hold. Completed when the engine confirms the replace with the new order's open
    quantity: the old hold and the reserve resolve, and the new hold opens with
    `unit_amount` x open quantity; the book's `held` changes only by `held_change` (normally
    zero or a release). Cancelled when the engine refuses: the reserve is released."""

    from_hold_id: str
    to_hold_id: str
    order_id: str
    account_id: str
    asset: str
    unit_amount: Decimal
    reserve: Decimal
    status: TransferStatus = TransferStatus.PENDING
    moved: Decimal | None = None
    new_amount: Decimal | None = None

    @classmethod
    def new(cls, from_hold_id: str, to_hold_id: str, order_id: str, account_id: str, asset: str,
            unit_amount: Decimal, reserve: Decimal) -> "HoldTransfer":
        check_amount(CASH, unit_amount, "unit_amount")  # a price per share, or 1 for shares
        if asset != CASH and unit_amount != 1:
            raise InvalidArgument([FieldViolation("unit_amount", "must be 1 for a share hold")])
        if reserve != 0:
            check_amount(asset, reserve, "reserve_amount")
        if from_hold_id == to_hold_id:
            raise InvalidArgument([FieldViolation("to_hold_id", "must differ from from_hold_id")])
        return cls(from_hold_id, to_hold_id, order_id, account_id, asset, unit_amount, reserve)

    @property
    def reserve_hold_id(self) -> str | None:
        return reserve_hold_id(self.to_hold_id) if self.reserve > 0 else None

    def same_request(self, other: "HoldTransfer") -> bool:
        return (self.from_hold_id, self.order_id, self.account_id, self.asset, self.unit_amount, self.reserve) == (
            other.from_hold_id, other.order_id, other.account_id, other.asset, other.unit_amount, other.reserve)

    def need(self, open_quantity: int) -> Decimal:
        """What the new hold reserves for `open_quantity` shares still to fill: for cash, the
        unit price × quantity rounded up to the cent (like order_svc's holds)."""
        assert open_quantity > 0
        need = self.unit_amount * open_quantity
        return need.quantize(CENT, rounding=ROUND_CEILING) if self.asset == CASH else need

    def complete(self, old_left: Decimal, reserve_left: Decimal, open_quantity: int) -> Decimal:
        """The engine replaced the order, leaving `open_quantity` open: the old hold's and the
        reserve's remainders (`old_left`, `reserve_left`) give way to the new hold. Returns the
        change of the book's held: new amount - what the two still held (<= 0 when the reserve
        was sized for the worst case, as order_svc does)."""
        if self.status is not TransferStatus.PENDING:
            raise HoldResolved(f"hold transfer to {self.to_hold_id} is already {self.status.value.lower()}",
                               metadata={"holdId": self.to_hold_id, "status": self.status.value})
        self.moved = old_left + reserve_left
        self.new_amount = self.need(open_quantity)
        self.status = TransferStatus.COMPLETED
        return self.new_amount - self.moved

    def cancel(self) -> None:
        if self.status is not TransferStatus.PENDING:
            raise HoldResolved(f"hold transfer to {self.to_hold_id} is already {self.status.value.lower()}",
                               metadata={"holdId": self.to_hold_id, "status": self.status.value})
        self.status = TransferStatus.CANCELLED
