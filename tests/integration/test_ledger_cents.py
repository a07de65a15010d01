"""The ledger's money figures in whole cents: fills of sub-penny prices, the positions they build,
and the account's statement (ListActivities) against its cash."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from ledger_svc.entrypoints import mapping
from ledger_svc.service_layer import commands, handlers as ledger, portfolio, settlement
from ledger_svc.service_layer.unit_of_work import LedgerUnitOfWork
from meshkit import calendar
from meshkit.executions import FILL, Execution
from meshkit.marketdata import Touch
from stockmesh.ledger.v1 import ledger_pb2
from tests.integration.conftest import own_database_fixtures

pytestmark = pytest.mark.integration
D = Decimal


# A database of this module's own: its fills are today's and some stay unsettled on purpose,
# which a settlement of the day in another test (test_settlement.py) would see. checked_pool
# (tests/conftest.py) checks the ledger's invariants on it after each test.
pool, database_url, namespace, ledger_addr = own_database_fixtures()


class Trade:
    """A buyer with cash and a seller with shares, each with an order's hold in the ledger, and
    the engine's fills between the two orders applied as the ledger's consumer applies them."""

    def __init__(self, pool, symbol: str, *, cash: str, shares: int, buy_hold: str, sell_hold: int,
                 seed_cost: str = "0") -> None:
        self.uow = lambda: LedgerUnitOfWork(pool)  # noqa: E731
        self.symbol, self.tag = symbol, uuid.uuid4().hex[:8]
        self.buyer, self.seller = f"cb-{self.tag}", f"cs-{self.tag}"
        self.buy_order, self.sell_order = f"ob-{self.tag}", f"os-{self.tag}"
        self.cash, self.shares, self.buy_hold, self.sell_hold = D(cash), shares, D(buy_hold), sell_hold
        self.seed_cost = D(seed_cost)
        self.n = 0

    async def open(self) -> "Trade":
        await ledger.deposit(commands.Deposit(self.buyer, self.cash, "fund"), self.uow)
        await ledger.credit_shares(commands.CreditShares(self.seller, self.symbol, D(self.shares), "seed",
                                                                self.seed_cost), self.uow)
        await ledger.place_hold(commands.PlaceHold(self.buy_order, self.buyer, self.buy_order, "USD", self.buy_hold),
                                self.uow)
        await ledger.place_hold(commands.PlaceHold(self.sell_order, self.seller, self.sell_order, self.symbol,
                                                   D(self.sell_hold)), self.uow)
        return self

    async def fill(self, quantity: int, price: str, buyer_leaves: int, seller_leaves: int) -> str:
        self.n += 1
        now = datetime.now(timezone.utc)
        fill_id = f"{self.symbol}:{self.tag}:{self.n}"
        assert await settlement.apply_execution(Execution(
            execution_id=fill_id, symbol=self.symbol, type=FILL, order_id=self.buy_order, account_id=self.buyer,
            side="BUY", counter_order_id=self.sell_order, counter_account_id=self.seller, price=D(price),
            quantity=quantity, leaves=buyer_leaves, counter_leaves=seller_leaves, executed_at=now,
            trade_date=calendar.trading_day(now)), self.uow)
        return fill_id

    async def settle(self) -> None:
        await settlement.settle(calendar.trading_day(datetime.now(timezone.utc)), self.uow)

    async def position(self, account: str) -> tuple[int, Decimal]:
        async with self.uow() as uow:
            p = await uow.settlement.position(account, self.symbol)
        return p.quantity, p.cost


async def test_a_sub_penny_fill_moves_whole_cents_on_every_leg(checked_pool):
    """3 SIRI at 0.8936 is 2.6808: the buyer pays 2.68, the seller is owed 2.68 and settles
    2.68, and the buyer's cost basis is 2.68; every balance stays in whole cents."""
    t = await Trade(checked_pool, "SIRI", cash="10.00", shares=3, buy_hold="2.82", sell_hold=3).open()
    await t.fill(3, "0.8936", 0, 0)
    buyer = await ledger.cash_balance(t.buyer, t.uow)
    assert (buyer.total, buyer.available, buyer.held) == (D("7.32"), D("7.32"), 0)
    seller = await ledger.cash_balance(t.seller, t.uow)
    assert (seller.total, seller.unsettled) == (D("2.68"), D("2.68"))
    assert await t.position(t.buyer) == (3, D("2.68"))
    await t.settle()
    seller = await ledger.cash_balance(t.seller, t.uow)
    assert (seller.total, seller.settled, seller.unsettled, seller.available) == (D("2.68"), D("2.68"), 0, D("2.68"))
    await ledger.withdraw(commands.Withdraw(t.seller, seller.available, "all"), t.uow)  # the account can be emptied
    await ledger.withdraw(commands.Withdraw(t.buyer, buyer.available, "all"), t.uow)
    assert (await ledger.cash_balance(t.seller, t.uow)).total == (await ledger.cash_balance(t.buyer, t.uow)).total == 0


async def test_partial_fills_at_the_limit_never_capture_more_than_the_hold(checked_pool):
    """A limit buy of 2 at 0.8950 holds 1.79 (rounded up to the cent). Filled 1 + 1 at its
    limit, each fill's 0.895 is rounded down: 0.89 twice, and the last cent is released."""
    t = await Trade(checked_pool, "SIRI", cash="5.00", shares=2, buy_hold="1.79", sell_hold=2).open()
    await t.fill(1, "0.8950", 1, 1)
    await t.fill(1, "0.8950", 0, 0)
    buyer = await ledger.cash_balance(t.buyer, t.uow)
    assert (buyer.total, buyer.available, buyer.held) == (D("3.22"), D("3.22"), 0)
    assert (await ledger.cash_balance(t.seller, t.uow)).unsettled == D("1.78")
    assert await t.position(t.buyer) == (2, D("1.78"))


async def test_a_fill_worth_less_than_a_cent_moves_shares_only_and_reconciles(checked_pool):
    t = await Trade(checked_pool, "PENNY", cash="1.00", shares=2, buy_hold="0.01", sell_hold=2).open()
    fill_id = await t.fill(2, "0.0040", 0, 0)
    assert (await ledger.book_balance(t.buyer, "PENNY", t.uow)).posted == 2
    assert (await ledger.cash_balance(t.buyer, t.uow)).total == D("1.00")
    assert (await ledger.cash_balance(t.seller, t.uow)).total == 0
    day = calendar.trading_day(datetime.now(timezone.utc))
    report = await settlement.reconcile(day, t.uow, None, settlement.SettlementReport(day))
    assert [d for d in report.discrepancies if d.reference == fill_id] == []


class Quotes:
    def __init__(self, **last: str) -> None:
        self.last = {k: D(v) for k, v in last.items()}

    async def touch(self, symbol: str) -> Touch:
        return Touch(bid=None, ask=None, last=self.last.get(symbol))


async def test_a_position_after_a_sale_shows_money_in_cents(checked_pool):
    """7 AAPL at an average of 188.1404 (cost 1316.98), 3 sold: the 4 left keep the average,
    their cost is cents (1316.98 × 4/7 = 752.56), and value, P&L and equity are cents."""
    t = await Trade(checked_pool, "AAPL", cash="1000.00", shares=7, buy_hold="600.00", sell_hold=3,
                    seed_cost="188.1404").open()
    await t.fill(3, "186.58", 0, 0)
    assert await t.position(t.seller) == (4, D("752.56"))
    view = await portfolio.portfolio(t.seller, t.uow, Quotes(AAPL="186.5833"))
    (p,) = view.positions
    assert (p.quantity, p.average_cost, p.market_value, p.unrealized_pnl) == (4, D("188.1400"), D("746.33"), D("-6.23"))
    assert view.equity == D("559.74") + D("746.33")  # 3 × 186.58 unsettled, and the shares


async def statement(t: Trade, account: str) -> list[ledger_pb2.Activity]:
    """The account's whole ListActivities, as the servicer maps it, oldest first."""
    lines: list[ledger_pb2.Activity] = []
    before = None
    while True:
        rows = await ledger.activities(account, before, 3, t.uow)  # small pages: the paging is exercised too
        lines += [mapping.activity_to_proto(r) for r in rows]
        if len(rows) < 3:
            return lines[::-1]
        before = rows[-1].activity_id


async def usd_sum(t: Trade, account: str, settled: bool | None = None) -> Decimal:
    """The statement's USD lines added up: all of them, or only those settled (or not)."""
    return sum((D(a.amount) for a in await statement(t, account)
                if a.asset == "USD" and settled in (None, a.settled)), D(0))


async def assert_statement_reconciles(t: Trade) -> None:
    """Each side's USD lines add up to its cash total, the settled ones to its settled cash
    and the others to its unsettled proceeds."""
    for account in (t.buyer, t.seller):
        cash = await ledger.cash_balance(account, t.uow)
        assert (await usd_sum(t, account), await usd_sum(t, account, True), await usd_sum(t, account, False)) == (
            cash.total, cash.settled, cash.unsettled), account


async def test_the_statement_sums_to_the_cash_total_before_and_after_settlement(checked_pool):
    """The seller's proceeds are on the statement from the sale (owed until settlement, as
    GetPortfolio's unsettled cash), and their settlement is not counted again."""
    t = await Trade(checked_pool, "SIRI", cash="10.00", shares=6, buy_hold="5.40", sell_hold=6).open()
    await ledger.deposit(commands.Deposit(t.seller, D("1.00"), "own-cash"), t.uow)
    first = await t.fill(3, "0.8936", 3, 3)
    second = await t.fill(3, "0.8940", 0, 0)
    await assert_statement_reconciles(t)
    seller = await statement(t, t.seller)
    proceeds = [(a.amount, a.reference, a.description, a.type, a.settled, a.HasField("settled_at")) for a in seller
                if a.asset == "USD" and a.reference in (first, second)]
    assert proceeds == [
        ("2.68", first, "Sold 3 SIRI at 0.8936: proceeds, unsettled until settlement", ledger_pb2.ACTIVITY_TYPE_FILL,
         False, False),
        ("2.68", second, "Sold 3 SIRI at 0.8940: proceeds, unsettled until settlement", ledger_pb2.ACTIVITY_TYPE_FILL,
         False, False)]
    # Everything else is settled when it is made: the deposit, the shares sold, the cash paid.
    deposit = next(a for a in seller if a.reference == "own-cash")
    assert (deposit.type, deposit.settled, deposit.settled_at) == (ledger_pb2.ACTIVITY_TYPE_DEPOSIT, True,
                                                                    deposit.created_at)
    others = [a for a in seller + await statement(t, t.buyer)
              if not (a.asset == "USD" and a.reference in (first, second) and D(a.amount) > 0)]
    # The seller's two deposits and two sales of shares; the buyer's deposit, and the cash
    # and shares of its two buys.
    assert len(others) == 9 and all(a.settled and a.settled_at == a.created_at for a in others)
    assert (await ledger.cash_balance(t.seller, t.uow)).total == D("6.36")

    await t.settle()
    await assert_statement_reconciles(t)
    assert (await ledger.cash_balance(t.seller, t.uow)).settled == D("6.36")
    seller = await statement(t, t.seller)
    paid = [a for a in seller if a.asset == "USD" and a.reference in (first, second)]
    assert [(a.description, a.settled) for a in paid] == [
        ("Sold 3 SIRI at 0.8936: proceeds, settled", True), ("Sold 3 SIRI at 0.8940: proceeds, settled", True)]
    # Settled when the settlement ran, after the sale.
    assert all(a.HasField("settled_at") and a.settled_at.ToDatetime() > a.created_at.ToDatetime() for a in paid)
    assert not [a for a in seller if a.type == ledger_pb2.ACTIVITY_TYPE_SETTLEMENT]  # counted at the sale


async def test_each_side_sees_its_trade_as_its_own_never_the_other_sides_order(checked_pool):
    t = await Trade(checked_pool, "AAPL", cash="1000.00", shares=3, buy_hold="561.75", sell_hold=3).open()
    fill_id = await t.fill(3, "187.25", 0, 0)
    buyer = [(a.asset, a.amount, a.description, a.reference) for a in await statement(t, t.buyer)]
    assert buyer == [("USD", "1000.00", "Deposit", "fund"),
                     ("USD", "-561.75", "Bought 3 AAPL at 187.25", fill_id),
                     ("AAPL", "3", "Bought 3 AAPL at 187.25", fill_id)]
    seller = [(a.asset, a.amount, a.description, a.reference) for a in await statement(t, t.seller)]
    assert seller == [("AAPL", "3", "Deposit of 3 AAPL", "seed"),
                      ("AAPL", "-3", "Sold 3 AAPL at 187.25", fill_id),
                      ("USD", "561.75", "Sold 3 AAPL at 187.25: proceeds, unsettled until settlement", fill_id)]
    for lines, other in ((buyer, t.sell_order), (seller, t.buy_order)):
        assert not [line for line in lines if other in line[2] or other in line[3]]
