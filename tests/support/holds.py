"""What the ledger shows of an account's holds, for tests that prove a refusal held nothing."""
from __future__ import annotations

import asyncpg


async def hold_footprint(pool: asyncpg.Pool, account: str) -> tuple[list[tuple], list[tuple], list[tuple]]:
    """The account's holds (id, order, status, amount, released), its ledger audit events (type,
    hold id, order id: every HOLD_PLACED / HOLD_RELEASED ever, in order) and its balances
    (asset, posted, held): equal before and after a call only if that call held nothing, not
    even for a moment (a hold placed and given back leaves its row and both events)."""
    async with pool.acquire() as conn:
        holds = [tuple(r) for r in await conn.fetch(
            "SELECT hold_id, order_id, status, amount, released FROM ledger.holds WHERE account_id = $1 "
            "ORDER BY hold_seq", account)]
        events = [tuple(r) for r in await conn.fetch(
            "SELECT event_type, payload::jsonb ->> 'holdId', payload::jsonb ->> 'orderId' FROM audit.events "
            "WHERE stream = $1 ORDER BY seq", f"ledger:{account}")]
        balances = [tuple(r) for r in await conn.fetch(
            "SELECT k.asset, b.posted, b.held FROM ledger.balances b JOIN ledger.books k USING (book_id) "
            "WHERE k.owner = $1 ORDER BY k.asset", account)]
    return holds, events, balances
