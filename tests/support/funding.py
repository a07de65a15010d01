"""Shares brought into an account from outside (a transfer in), straight through the ledger's
service layer: there is no public RPC for it, as there is none at a real broker."""
from __future__ import annotations

import contextlib
from decimal import Decimal

import asyncpg

from ledger_svc.service_layer import commands, handlers
from ledger_svc.service_layer.unit_of_work import LedgerUnitOfWork


async def transfer_in_shares(database_url: str, account: str, symbol: str, quantity: int, cost_price: str) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        await handlers.credit_shares(
            commands.CreditShares(account, symbol, Decimal(quantity), f"transfer-in-{symbol}", Decimal(cost_price)),
            lambda: LedgerUnitOfWork(pool))
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def funded_ledger(server_url: str, *, cash: str = "1000.00", shares: int = 10):
    """A database of its own (no other test's fills in it) whose ledger has a "buyer" with
    `cash` and a "seller" with `shares` AAPL: its unit-of-work factory."""
    from tests.conftest import fresh_database

    async with fresh_database(server_url) as url:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=5)
        uow = lambda: LedgerUnitOfWork(pool)  # noqa: E731
        try:
            await handlers.deposit(commands.Deposit("buyer", Decimal(cash), "fund"), uow)
            await handlers.credit_shares(commands.CreditShares("seller", "AAPL", Decimal(shares), "seed"), uow)
            yield uow
        finally:
            await pool.close()
