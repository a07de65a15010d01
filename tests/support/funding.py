"""Shares brought into an account from outside (a transfer in), straight through the ledger's
service layer: there is no public RPC for it, as there is none at a real broker."""
from __future__ import annotations

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
