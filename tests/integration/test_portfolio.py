"""GetPortfolio's read: cash and positions from one statement, valued at the latest quote."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from ledger_svc.service_layer import commands, handlers, portfolio
from ledger_svc.service_layer.unit_of_work import LedgerUnitOfWork
from meshkit.marketdata import Touch

pytestmark = pytest.mark.integration


class FixedQuotes:
    def __init__(self, last: dict[str, Decimal]) -> None:
        self.last = last

    async def touch(self, symbol: str) -> Touch:
        price = self.last.get(symbol)
        return Touch(bid=None, ask=None, last=price)


async def test_an_account_with_nothing_has_zero_cash_and_no_positions(checked_pool):
    view = await portfolio.portfolio(f"nobody-{uuid.uuid4().hex[:8]}", lambda: LedgerUnitOfWork(checked_pool),
                                     FixedQuotes({}))
    assert (view.cash.total, view.cash.available, view.cash.held, view.positions, view.equity) == \
        (Decimal(0), Decimal(0), Decimal(0), [], Decimal(0))


async def test_cash_and_positions_are_valued_at_the_latest_quote(checked_pool):
    account = f"pf-{uuid.uuid4().hex[:8]}"
    uow = lambda: LedgerUnitOfWork(checked_pool)  # noqa: E731
    await handlers.deposit(commands.Deposit(account, Decimal("1000.50"), "cash"), uow)
    await handlers.credit_shares(commands.CreditShares(account, "MSFT", Decimal(10), "in-msft", Decimal("400")), uow)
    await handlers.credit_shares(commands.CreditShares(account, "AAPL", Decimal(3), "in-aapl", Decimal("150.10")), uow)
    view = await portfolio.portfolio(account, uow, FixedQuotes({"AAPL": Decimal("190.00")}))  # no MSFT quote

    assert view.cash.total == view.cash.available == Decimal("1000.50") and view.cash.held == 0
    assert [(p.symbol, p.quantity, p.available, p.held, p.average_cost) for p in view.positions] == [
        ("AAPL", 3, 3, 0, Decimal("150.1000")), ("MSFT", 10, 10, 0, Decimal("400.0000"))]
    aapl, msft = view.positions
    assert (aapl.market_price, aapl.market_value, aapl.unrealized_pnl) == \
        (Decimal("190.00"), Decimal("570.00"), Decimal("570.00") - Decimal("450.30"))
    assert (msft.market_price, msft.market_value, msft.unrealized_pnl) == (None, None, None)
    # Equity counts what can be valued: the cash and AAPL at its quote.
    assert view.equity == Decimal("1000.50") + Decimal("570.00")


class BookQuotes:
    """Symbols with a two-sided book and no trade yet."""

    def __init__(self, books: dict[str, tuple[str, str]]) -> None:
        self.books = books

    async def touch(self, symbol: str) -> Touch:
        bid, ask = self.books[symbol]
        return Touch(bid=Decimal(bid), ask=Decimal(ask), last=None)


async def test_a_position_valued_at_the_mid_is_worth_the_price_it_shows(checked_pool):
    """Before a symbol's first trade its position is valued at the mid, at the symbol's price
    precision, so that the value is the price shown × the quantity (round 17: a mid of 62.125
    read "62.13" and valued 1,000 shares at 62,125.00)."""
    from ledger_svc.entrypoints.mapping import portfolio_to_proto

    account = f"pf-{uuid.uuid4().hex[:8]}"
    uow = lambda: LedgerUnitOfWork(checked_pool)  # noqa: E731
    await handlers.credit_shares(commands.CreditShares(account, "AAPL", Decimal(1000), "in-aapl", Decimal("60")), uow)
    await handlers.credit_shares(commands.CreditShares(account, "SIRI", Decimal(999), "in-siri", Decimal("0.5")), uow)
    view = await portfolio.portfolio(account, uow, BookQuotes({"AAPL": ("62.10", "62.15"), "SIRI": ("0.8935", "0.8940")}))
    shown = portfolio_to_proto(account, view, [], datetime.now(timezone.utc))
    assert [(p.symbol, p.market_price, p.market_value) for p in shown.positions] == [
        ("AAPL", "62.13", "62130.00"), ("SIRI", "0.8938", "892.91")]  # 0.89375 half-up; 999 × 0.8938 = 892.9062
    assert all(abs(Decimal(p.market_price) * p.quantity - Decimal(p.market_value)) <= Decimal("0.005")
               for p in shown.positions)
