"""The ledger's rules, in plain Python: balanced journal entries, exact amounts, and
balances whose available part never goes below zero.

The database enforces the same rules (a deferred constraint trigger for balance, CHECK
constraints on balances); this module is what the service layer reasons with and what the
unit tests pin down.
"""
from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

from meshkit.errors import AlreadyExists, FailedPrecondition

CASH = "USD"
EXTERNAL = "$external"  # counter-account of money entering or leaving the brokerage
CENT = Decimal("0.01")


class UnbalancedEntry(ValueError):
    """A journal entry whose postings do not sum to zero per asset."""


class InsufficientFunds(FailedPrecondition):
    default_reason = "INSUFFICIENT_FUNDS"


class DuplicateIdempotencyKey(AlreadyExists):
    default_reason = "DUPLICATE_IDEMPOTENCY_KEY"


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

    def __post_init__(self) -> None:
        if len(self.postings) < 2:
            raise UnbalancedEntry("a journal entry needs at least two postings")
        sums: dict[str, Decimal] = defaultdict(Decimal)
        for p in self.postings:
            sums[p.book.asset] += p.amount
        off = {a: s for a, s in sums.items() if s != 0}
        if off:
            raise UnbalancedEntry(f"postings do not balance: {off}")


def deposit_entry(account_id: str, amount: Decimal, key: str) -> JournalEntry:
    """Cash comes in: the customer's USD book is credited, the external counter-account debited."""
    return JournalEntry(
        entry_id=uuid.uuid4(), kind="DEPOSIT", account_id=account_id, asset=CASH, amount=amount,
        idempotency_key=key, description="Deposit",
        postings=(Posting(BookRef(account_id, CASH), amount), Posting(BookRef(EXTERNAL, CASH), -amount)),
    )


def withdrawal_entry(account_id: str, amount: Decimal, key: str) -> JournalEntry:
    return JournalEntry(
        entry_id=uuid.uuid4(), kind="WITHDRAWAL", account_id=account_id, asset=CASH, amount=amount,
        idempotency_key=key, description="Withdrawal",
        postings=(Posting(BookRef(account_id, CASH), -amount), Posting(BookRef(EXTERNAL, CASH), amount)),
    )


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
            raise InsufficientFunds(
                f"available {self.available} is less than {-amount}",
                metadata={"available": str(self.available), "requested": str(-amount)})
        self.posted += amount


@dataclass(frozen=True)
class CashBalance:
    total: Decimal
    available: Decimal
    held: Decimal
    settled: Decimal
    unsettled: Decimal

    @classmethod
    def of(cls, posted: Decimal, held: Decimal, unsettled: Decimal = Decimal(0)) -> "CashBalance":
        return cls(total=posted, available=posted - held, held=held,
                   settled=posted - unsettled, unsettled=unsettled)


def same_request(existing_amount: Decimal, amount: Decimal) -> bool:
    """A retried key must carry the same amount (compared exactly: 10 == 10.00)."""
    return existing_amount == amount
