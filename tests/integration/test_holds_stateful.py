"""Holds against a simple in-memory model, in any order (Hypothesis stateful testing).

Two fresh accounts per example hold cash and shares, capture to each other or to the
clearing counter-account, release, and retry any earlier operation. After every step the
database's books (posted, held, available) and holds (captured, released, status) must equal
the model's, and every outcome (success or refusal reason) must be the one the model expects.
"""
from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from decimal import Decimal

import asyncpg
import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, \
    run_state_machine_as_test

from ledger_svc.domain.model import Hold
from ledger_svc.service_layer import commands, handlers
from ledger_svc.service_layer.unit_of_work import LedgerUnitOfWork
from meshkit.errors import DomainError

pytestmark = pytest.mark.integration

D = Decimal
SYMBOL = "IBM"
ASSETS = ("USD", SYMBOL)
CLEARING = ""  # a capture without a counter account goes to '$clearing' (not modelled: a system book)


# --- the model: as plain as it gets ------------------------------------------------------

@dataclass
class ModelHold:
    account: str
    order_id: str
    asset: str
    amount: Decimal
    captured: Decimal = D(0)
    released: Decimal = D(0)
    status: str = "PENDING"

    @property
    def left(self) -> Decimal:
        return self.amount - self.captured - self.released


@dataclass
class Model:
    posted: dict[tuple[str, str], Decimal] = field(default_factory=dict)
    held: dict[tuple[str, str], Decimal] = field(default_factory=dict)
    holds: dict[str, ModelHold] = field(default_factory=dict)
    captures: dict[tuple[str, str], tuple[Decimal, str]] = field(default_factory=dict)

    def available(self, book: tuple[str, str]) -> Decimal:
        return self.posted.get(book, D(0)) - self.held.get(book, D(0))

    def place(self, hold_id: str, account: str, order_id: str, asset: str, amount: Decimal) -> str | None:
        """None on success, else the refusal reason; changes the model only on success."""
        if hold_id in self.holds:
            h = self.holds[hold_id]
            same = (h.account, h.order_id, h.asset, h.amount) == (account, order_id, asset, amount)
            return None if same else "DUPLICATE_HOLD_ID"
        book = (account, asset)
        if self.available(book) < amount:
            return "INSUFFICIENT_FUNDS" if asset == "USD" else "INSUFFICIENT_SHARES"
        self.held[book] = self.held.get(book, D(0)) + amount
        self.holds[hold_id] = ModelHold(account, order_id, asset, amount)
        return None

    def capture(self, hold_id: str, capture_id: str, amount: Decimal, counter: str) -> str | None:
        h = self.holds.get(hold_id)
        if h is None:
            return "HOLD_NOT_FOUND"
        if (hold_id, capture_id) in self.captures:
            return None if self.captures[hold_id, capture_id] == (amount, counter) else "DUPLICATE_CAPTURE_ID"
        if h.asset != "USD" and amount != amount.to_integral_value():
            return "INVALID_ARGUMENT"  # shares move whole (e.g. a cash-sized capture retried on a share hold)
        if h.status != "PENDING":
            return "HOLD_RESOLVED"
        if amount > h.left:
            return "HOLD_EXCEEDED"
        book = (h.account, h.asset)
        self.posted[book] -= amount
        self.held[book] -= amount
        if counter != CLEARING:
            self.posted[counter, h.asset] = self.posted.get((counter, h.asset), D(0)) + amount
        h.captured += amount
        if h.left == 0:
            h.status = "CAPTURED"
        self.captures[hold_id, capture_id] = (amount, counter)
        return None

    def release(self, hold_id: str) -> str | None:
        h = self.holds.get(hold_id)
        if h is None:
            return "HOLD_NOT_FOUND"
        if h.status == "PENDING":
            self.held[h.account, h.asset] -= h.left
            h.released += h.left
            h.status = "RELEASED"
        return None


# --- the machine ---------------------------------------------------------------------------

cash_amounts = st.integers(1, 300_0000).map(lambda n: D(n) / 10000)  # 0.0001 .. 300.0000
share_amounts = st.integers(1, 40).map(D)


class HoldsMachine(RuleBasedStateMachine):
    runner: asyncio.Runner
    pool: asyncpg.Pool

    def __init__(self) -> None:
        super().__init__()
        tag = uuid.uuid4().hex[:10]
        self.accounts = (f"sm-a-{tag}", f"sm-b-{tag}")
        self.model = Model()
        self.hold_ids: list[str] = []
        self.ops: list[tuple] = []
        self.n = 0
        self.uow = lambda: LedgerUnitOfWork(self.pool)

    def run(self, coro):
        return self.runner.run(coro)

    def new_id(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}-{self.accounts[0]}-{self.n}"

    @initialize(cash=st.tuples(st.integers(0, 2000_00), st.integers(0, 2000_00)),
                shares=st.tuples(st.integers(0, 100), st.integers(0, 100)))
    def fund(self, cash: tuple[int, int], shares: tuple[int, int]) -> None:
        for acct, cents, qty in zip(self.accounts, cash, shares):
            if cents:
                amount = D(cents) / 100
                self.run(handlers.deposit(commands.Deposit(acct, amount, "fund"), self.uow))
                self.model.posted[acct, "USD"] = amount
            if qty:
                self.run(handlers.credit_shares(commands.CreditShares(acct, SYMBOL, D(qty), "fund"), self.uow))
                self.model.posted[acct, SYMBOL] = D(qty)

    # Every operation goes through `apply`, so a retry is just the same tuple again.
    def apply(self, op: tuple) -> None:
        kind, *args = op
        if kind == "place":
            expected = self.model.place(*args)
            call = handlers.place_hold(commands.PlaceHold(*args), self.uow)
        elif kind == "capture":
            expected = self.model.capture(*args)
            call = handlers.capture_hold(commands.CaptureHold(*args), self.uow)
        else:
            expected = self.model.release(*args)
            call = handlers.release_hold(commands.ReleaseHold(*args), self.uow)
        try:
            answer: Hold | DomainError = self.run(call)
        except DomainError as exc:
            answer = exc
        self.check(op, expected, answer)

    def check(self, op: tuple, expected: str | None, answer: Hold | DomainError) -> None:
        outcome = answer.reason if isinstance(answer, DomainError) else None
        assert outcome == expected, f"{op}: database says {outcome}, model says {expected}"
        if isinstance(answer, Hold):
            m = self.model.holds[answer.hold_id]
            assert (answer.captured, answer.released, answer.status.value) == (m.captured, m.released, m.status)

    def new_place(self, owner: int, asset: str, data: st.DataObject) -> tuple:
        amount = data.draw(cash_amounts if asset == "USD" else share_amounts, label="amount")
        hold_id = self.new_id("h")
        self.hold_ids.append(hold_id)
        return ("place", hold_id, self.accounts[owner], f"order-{hold_id}", asset, amount)

    @rule(owner=st.integers(0, 1), asset=st.sampled_from(ASSETS), data=st.data())
    def place(self, owner: int, asset: str, data: st.DataObject) -> None:
        op = self.new_place(owner, asset, data)
        self.ops.append(op)
        self.apply(op)

    @rule(data=st.data(), size=st.integers(1, 5))
    def place_many(self, data: st.DataObject, size: int) -> None:
        """Several placements in one call (PlaceHolds, as order_svc batches them): new ones and
        earlier ones again, mixed; each answered as if placed alone, one after the other."""
        ops = []
        for _ in range(size):
            earlier = [op for op in self.ops if op[0] == "place"]
            if earlier and data.draw(st.booleans(), label="again"):
                ops.append(data.draw(st.sampled_from(earlier), label="earlier"))
            else:
                op = self.new_place(data.draw(st.integers(0, 1), label="owner"),
                                    data.draw(st.sampled_from(ASSETS), label="asset"), data)
                self.ops.append(op)
                ops.append(op)
        answers = self.run(handlers.place_holds([commands.PlaceHold(*op[1:]) for op in ops], self.uow))
        for op, answer in zip(ops, answers, strict=True):
            self.check(op, self.model.place(*op[1:]), answer)

    def pick_hold(self, data: st.DataObject) -> str:
        """Mostly a PENDING hold (where captures and releases do something); sometimes any id
        ever tried: refused ones (not found), resolved ones."""
        pending = [k for k, h in self.model.holds.items() if h.status == "PENDING"]
        wild = data.draw(st.integers(0, 3), label="wild") == 3
        return data.draw(st.sampled_from(pending if pending and not wild else self.hold_ids), label="hold")

    @precondition(lambda self: self.hold_ids)
    @rule(data=st.data(), how=st.sampled_from(["part", "all", "over", "any"]), to_other=st.booleans())
    def capture(self, data: st.DataObject, how: str, to_other: bool) -> None:
        hold_id = self.pick_hold(data)
        h = self.model.holds.get(hold_id)
        asset = h.asset if h else "USD"
        amounts = cash_amounts if asset == "USD" else share_amounts
        if h is None or how == "any" or h.left == 0:
            amount = data.draw(amounts, label="amount")
        elif how == "all":
            amount = h.left
        elif how == "part":
            amount = data.draw(st.sampled_from([h.left / 2, h.left / 3, D(1)]), label="part")
            amount = amount.quantize(D("0.0001") if asset == "USD" else D(1), rounding="ROUND_DOWN")
            amount = amount if amount > 0 else h.left
        else:
            amount = h.left + (D("0.0001") if asset == "USD" else D(1))
        owner = h.account if h else self.accounts[0]
        counter = next(a for a in self.accounts if a != owner) if to_other else CLEARING
        op = ("capture", hold_id, self.new_id("c"), amount, counter)
        self.ops.append(op)
        self.apply(op)

    @precondition(lambda self: self.hold_ids)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        op = ("release", self.pick_hold(data))
        self.ops.append(op)
        self.apply(op)

    @precondition(lambda self: self.ops)
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        """Any earlier operation again, verbatim: applied ones change nothing; refused ones are
        judged afresh (funds may have been freed since)."""
        self.apply(data.draw(st.sampled_from(self.ops), label="retry"))

    @precondition(lambda self: self.model.holds)
    @rule(data=st.data(), bump=st.sampled_from(["amount", "order"]))
    def reuse_hold_id(self, data: st.DataObject, bump: str) -> None:
        hold_id = data.draw(st.sampled_from(sorted(self.model.holds)), label="hold")
        h = self.model.holds[hold_id]
        amount = h.amount + 1 if bump == "amount" else h.amount
        order_id = h.order_id + "-x" if bump == "order" else h.order_id
        self.apply(("place", hold_id, h.account, order_id, h.asset, amount))

    @invariant()
    def database_equals_model(self) -> None:
        async def read():
            async with self.pool.acquire() as conn:
                books = await conn.fetch(
                    """
                    SELECT k.owner, k.asset, b.posted, b.held FROM ledger.balances b
                      JOIN ledger.books k USING (book_id) WHERE k.owner = ANY($1)
                    """, list(self.accounts))
                holds = await conn.fetch(
                    "SELECT hold_id, captured, released, status FROM ledger.holds WHERE account_id = ANY($1)",
                    list(self.accounts))
            return books, holds

        books, holds = self.run(read())
        db_books = {(r["owner"], r["asset"]): (r["posted"], r["held"], r["posted"] - r["held"]) for r in books}
        for acct in self.accounts:
            for asset in ASSETS:
                book = (acct, asset)
                want = (self.model.posted.get(book, D(0)), self.model.held.get(book, D(0)), self.model.available(book))
                assert db_books.get(book, (D(0), D(0), D(0))) == want, f"book {book}"
        assert {r["hold_id"]: (r["captured"], r["released"], r["status"]) for r in holds} == {
            k: (h.captured, h.released, h.status) for k, h in self.model.holds.items()}


def test_holds_behave_like_the_model(database_url, checked_pool):
    # The whole-database invariants run once, after the test (checked_pool): run per example
    # they would blame the shrunk example for data an earlier example broke.
    with asyncio.Runner() as runner:
        # The machine runs synchronously, so it drives its own event loop and pool.
        async def open_pool() -> asyncpg.Pool:
            return await asyncpg.create_pool(database_url, min_size=1, max_size=2)

        pool = runner.run(open_pool())
        HoldsMachine.runner, HoldsMachine.pool = runner, pool
        try:
            run_state_machine_as_test(HoldsMachine, settings=settings(
                max_examples=100, stateful_step_count=40, deadline=None,
                suppress_health_check=[HealthCheck.too_slow]))
        finally:
            runner.run(pool.close())
