"""The portfolio: cash, positions valued at the latest quote, equity."""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from ledger_svc.domain.model import CashBalance
from ledger_svc.service_layer.handlers import UowFactory
from meshkit.marketdata import Touch


class Quotes(Protocol):
    async def touch(self, symbol: str) -> Touch: ...


@dataclass(frozen=True)
class PositionView:
    symbol: str
    quantity: int
    available: int
    held: int
    average_cost: Decimal
    market_price: Decimal | None
    market_value: Decimal | None
    unrealized_pnl: Decimal | None


@dataclass(frozen=True)
class PortfolioView:
    cash: CashBalance
    positions: list[PositionView]
    equity: Decimal


async def portfolio(account_id: str, uow_factory: UowFactory, quotes: Quotes | None) -> PortfolioView:
    async with uow_factory() as uow:
        cash = await uow.ledger.cash(account_id)
        rows = await uow.settlement.positions(account_id)
    positions, equity = [], cash.total
    for r in rows:
        qty = int(r["posted"])
        avg = (r["cost"] / r["qty"]).quantize(Decimal("0.0001")) if r["qty"] else Decimal(0)
        price = None
        if quotes is not None:
            t = await quotes.touch(r["symbol"])
            price = t.last or (t.bid + t.ask) / 2 if (t.last or (t.bid and t.ask)) else None
        value = price * qty if price is not None else None
        pnl = value - r["cost"] if value is not None else None
        if value is not None:
            equity += value
        positions.append(PositionView(r["symbol"], qty, qty - int(r["held"]), int(r["held"]), avg, price, value, pnl))
    return PortfolioView(cash, positions, equity)
