"""The portfolio: cash, positions valued at the latest quote, equity."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Protocol

from ledger_svc.domain.model import CASH, CashBalance
from ledger_svc.domain.settlement import Position
from ledger_svc.service_layer.handlers import UowFactory
from meshkit.marketdata import Touch
from meshkit.money import average_price, cents
from meshkit.symbols import price_tick


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
class HeldOrder:
    """An order the account's holds are open for, as the ledger's snapshot has it: the shares
    of its fills the ledger has applied (those of the orders it replaced included, as FIX's
    CumQty and order_svc's filled_quantity) and Σ price × quantity of them; `replacing`: a
    replacement whose replace the ledger has not applied yet (its holds, the replaced order's
    and the replace's reserve, if any; its fills, the replaced order's)."""
    order_id: str
    filled: int
    notional: Decimal
    replacing: bool = False

    @property
    def average_fill_price(self) -> Decimal | None:
        """As order_svc computes it (meshkit.money.average_price), from the same fills."""
        return average_price(self.notional, self.filled) if self.filled else None


@dataclass(frozen=True)
class PortfolioView:
    cash: CashBalance
    positions: list[PositionView]
    equity: Decimal
    held_orders: list[HeldOrder] = field(default_factory=list)

    @property
    def holds_anything(self) -> bool:
        """Some hold is open. Every live order has its hold (placed before the order is
        accepted, released when it ends: the invariant the tests check after every test), and
        the open orders listed are those of the open holds, so an account that holds nothing has
        no open order to list (and order_svc is not asked)."""
        return bool(self.held_orders)


async def portfolio(account_id: str, uow_factory: UowFactory, quotes: Quotes | None) -> PortfolioView:
    async with uow_factory().single_statement() as uow:
        rows = await uow.settlement.holdings(account_id, CASH)
    cash = CashBalance.of(rows[0]["posted"], rows[0]["held"], rows[0]["unsettled"])
    held_orders = held_orders_of(rows[0])
    rows = [r for r in rows if r["symbol"] is not None]
    # Every position's latest market at once, not one after another.
    touches: list[Touch | None] = [None] * len(rows)
    if quotes is not None:
        touches = list(await asyncio.gather(*(quotes.touch(r["symbol"]) for r in rows)))
    positions, equity = [], cash.total
    for r, t in zip(rows, touches):
        qty = int(r["shares"])
        avg = Position(r["qty"], r["cost"]).average_cost
        price = None
        if t is not None and t.last:
            price = t.last
        elif t is not None and t.bid and t.ask:
            # The mid at the symbol's price precision, as the position shows it, so that the
            # value is the price shown × the quantity (round 17: a mid of 62.125 read "62.13"
            # and valued 1,000 shares at 62,125.00).
            mid = (t.bid + t.ask) / 2
            price = mid.quantize(price_tick(r["symbol"], mid), rounding=ROUND_HALF_UP)
        # Money in cents (the cost basis is; the value rounded half-up), per-share prices exact.
        value = cents(price * qty) if price is not None else None
        pnl = cents(value - r["cost"]) if value is not None else None
        if value is not None:
            equity += value
        positions.append(PositionView(r["symbol"], qty, qty - int(r["shares_held"]), int(r["shares_held"]), avg, price,
                                      value, pnl))
    return PortfolioView(cash, positions, cents(equity), held_orders)


def held_orders_of(row) -> list[HeldOrder]:
    """The open holds' orders of a `holdings` row (its parallel arrays)."""
    return [HeldOrder(o, int(f), n, r)
            for o, f, n, r in zip(row["held_orders"], row["filled"], row["notional"], row["replacing"])]
