"""Settlement of the engine's executions, in plain Python: who pays whom for a fill, how a
position's cost basis moves, and what a trading day's reconciliation looks for."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from ledger_svc.domain.model import CASH, CLEARING, BookRef, JournalEntry, Posting
from meshkit.executions import CANCELLED, EXPIRED, FILL, REJECTED, Execution

# Executions that end the order they name. Not CANCEL_REJECTED: a refused cancel or replace
# leaves its order as it was. Not REPLACED: the old hold moves to the new order instead.
ENDS_ORDER = frozenset({CANCELLED, EXPIRED, REJECTED})


@dataclass(frozen=True)
class FillLegs:
    buyer_account: str
    buyer_order: str
    buyer_leaves: int
    seller_account: str
    seller_order: str
    seller_leaves: int
    quantity: int
    price: Decimal

    @property
    def cash(self) -> Decimal:
        return self.price * self.quantity


def legs(ex: Execution) -> FillLegs:
    assert ex.type == FILL and ex.price is not None and ex.quantity > 0
    taker = (ex.account_id, ex.order_id, ex.leaves)
    maker = (ex.counter_account_id, ex.counter_order_id, ex.counter_leaves)
    buyer, seller = (taker, maker) if ex.side == "BUY" else (maker, taker)
    return FillLegs(*buyer, *seller, quantity=ex.quantity, price=ex.price)


@dataclass
class Position:
    quantity: int = 0
    cost: Decimal = Decimal(0)

    @property
    def average_cost(self) -> Decimal:
        return self.cost / self.quantity if self.quantity else Decimal(0)

    def buy(self, quantity: int, price: Decimal) -> None:
        self.quantity += quantity
        self.cost += price * quantity

    def sell(self, quantity: int) -> None:
        """Selling keeps the average cost of what is left (the cost leaves pro rata)."""
        assert 0 < quantity <= self.quantity
        if quantity == self.quantity:
            self.quantity, self.cost = 0, Decimal(0)
        else:
            self.cost -= self.cost * quantity / self.quantity
            self.quantity -= quantity


def settlement_entry(fill_id: str, account_id: str, amount: Decimal) -> JournalEntry:
    """T+1: the sale's proceeds move from clearing to the seller's cash."""
    return JournalEntry(
        entry_id=uuid.uuid4(), kind="SETTLEMENT", account_id=account_id, asset=CASH, amount=amount,
        idempotency_key=f"settle:{fill_id}", reference=fill_id, description=f"Settlement of fill {fill_id}",
        postings=(Posting(BookRef(account_id, CASH), amount), Posting(BookRef(CLEARING, CASH), -amount)))


@dataclass(frozen=True)
class Discrepancy:
    kind: str
    reference: str
    detail: str


@dataclass
class SettlementReport:
    trading_day: date
    fills_settled: int = 0
    fills_already_settled: int = 0
    amount_settled: Decimal = Decimal(0)
    discrepancies: list[Discrepancy] | None = None
    # What the ledger was reconciled against: the execution journal, or why only its own records.
    reconciled_against: str = ""

    def __post_init__(self) -> None:
        self.discrepancies = self.discrepancies or []


@dataclass(frozen=True)
class JournalTrim:
    """A trim of the execution journal: the executions published before `before` began, below
    sequence `cut` (`held_back_by`: the consumer whose unacknowledged executions stopped it
    short), `purged` of them (or that would be, in a dry run)."""
    before: date
    stream: str
    first_seq: int
    last_seq: int
    cut: int
    purged: int
    held_back_by: str | None
    dry_run: bool
