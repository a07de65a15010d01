"""Settlement of the engine's executions, in plain Python: who pays whom for a fill, how a
position's cost basis moves, and what a trading day's reconciliation looks for."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal

from ledger_svc.domain.model import CASH, CENT, CLEARING, BookRef, JournalEntry, Posting
from meshkit.executions import FILL, Execution


def fill_cash(price: Decimal, quantity: int) -> Decimal:
    """A fill's cash amount (its principal): price × quantity rounded DOWN to the cent. The
    same amount on every leg (the buyer pays it, clearing owes it, the seller is credited it),
    so every asset still sums to zero. Exact for prices of a dollar and above (tick 0.01);
    only sub-penny prices round. Down, not half-up: the buyer's cash hold is the order's
    limit (or collar) × quantity rounded up to the cent, and rounding each of several partial
    fills half-up can take more than that (a limit buy of 2 at 0.8950 filled 1 + 1 would
    capture 0.90 + 0.90 from a hold of 1.79); rounded down, the captures never exceed
    Σ price × quantity <= the hold. A fill worth less than a cent moves no cash (0)."""
    return (price * quantity).quantize(CENT, rounding=ROUND_DOWN)


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
        return fill_cash(self.price, self.quantity)


def legs(ex: Execution) -> FillLegs:
    assert ex.type == FILL and ex.price is not None and ex.quantity > 0
    taker = (ex.account_id, ex.order_id, ex.leaves)
    maker = (ex.counter_account_id, ex.counter_order_id, ex.counter_leaves)
    buyer, seller = (taker, maker) if ex.side == "BUY" else (maker, taker)
    return FillLegs(*buyer, *seller, quantity=ex.quantity, price=ex.price)


@dataclass
class Position:
    """Quantity and cost basis. The cost is money, in cents: what the shares were paid (each
    fill's cash, `fill_cash`); the average cost per share is their quotient, unrounded (to
    Decimal's 28 digits): whoever shows it rounds it once, to the symbol's tick. Rounded to four
    places first, 6567.22 / 105 = 62.544952… would show as 62.55 (62.5450, then half-up)."""
    quantity: int = 0
    cost: Decimal = Decimal(0)

    @property
    def average_cost(self) -> Decimal:
        return self.cost / self.quantity if self.quantity else Decimal(0)

    def buy(self, quantity: int, price: Decimal) -> None:
        self.receive(quantity, fill_cash(price, quantity))

    def receive(self, quantity: int, cost: Decimal) -> None:
        """`quantity` shares come in, with `cost` their cost basis in cents."""
        self.quantity += quantity
        self.cost += cost

    def sell(self, quantity: int) -> Decimal:
        """Selling keeps the average cost of what is left: the cost leaves pro rata, rounded
        half-up to the cent, so what is left stays in cents (all of it leaves with the last
        share). Returns the cost that left. More than the position knows of (shares the book
        holds that came without a cost: ShortPosition's case) is refused."""
        if not 0 < quantity <= self.quantity:
            raise ShortPosition(f"{quantity} shares leave a position of {self.quantity}")
        if quantity == self.quantity:
            leaving = self.cost
            self.quantity, self.cost = 0, Decimal(0)
        else:
            leaving = min((self.cost * quantity / self.quantity).quantize(CENT, rounding=ROUND_HALF_UP), self.cost)
            self.cost -= leaving
            self.quantity -= quantity
        return leaving


class ShortPosition(ValueError):
    """More shares leave a position than it holds: the account's book had shares its position
    was never told of (a bug; a fill applies it as shares of zero cost, logged)."""


def settlement_entry(fill_id: str, account_id: str, amount: Decimal) -> JournalEntry:
    """The end-of-day settlement of a sale (after its day's close, MISSION F7; not a street
    T+1): its proceeds move from clearing to the seller's cash."""
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
