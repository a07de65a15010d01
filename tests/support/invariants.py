"""Ledger invariants, checked after every integration and end-to-end test."""
from __future__ import annotations

import asyncpg


async def check(pool: asyncpg.Pool) -> list[str]:
    problems: list[str] = []
    async with pool.acquire() as conn:
        for r in await conn.fetch(
                "SELECT asset, sum(amount) AS total FROM ledger.postings GROUP BY asset HAVING sum(amount) <> 0"):
            problems.append(f"postings of {r['asset']} sum to {r['total']}, not 0")
        for r in await conn.fetch(
                "SELECT entry_id, asset FROM ledger.postings GROUP BY entry_id, asset HAVING sum(amount) <> 0"):
            problems.append(f"entry {r['entry_id']} does not balance in {r['asset']}")
        for r in await conn.fetch(
                """
                SELECT b.book_id, b.posted, coalesce(sum(p.amount), 0) AS postings
                  FROM ledger.balances b LEFT JOIN ledger.postings p USING (book_id)
                 GROUP BY b.book_id, b.posted HAVING b.posted <> coalesce(sum(p.amount), 0)
                """):
            problems.append(f"book {r['book_id']}: balance {r['posted']} but postings sum to {r['postings']}")
        for r in await conn.fetch("SELECT book_id, posted, held FROM ledger.balances WHERE held < 0 OR posted - held < 0"):
            problems.append(f"book {r['book_id']}: posted {r['posted']} held {r['held']}")
    return problems
