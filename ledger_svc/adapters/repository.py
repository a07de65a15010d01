"""The ledger's only SQL."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

import asyncpg

from meshkit import audit
from ledger_svc.domain.model import CASH, BookRef, CashBalance, InsufficientFunds, JournalEntry


class ActivityRow(NamedTuple):
    posting_id: int
    kind: str
    asset: str
    amount: Decimal
    description: str
    reference: str
    created_at: datetime


class LedgerRepository:
    # Books are never deleted, so (owner, asset) -> book_id is cached for the process.
    _book_ids: dict[BookRef, int] = {}

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def book_id(self, ref: BookRef) -> int:
        cached = self._book_ids.get(ref)
        if cached is not None:
            return cached
        book_id = await self.conn.fetchval(
            """
            WITH new AS (
                INSERT INTO ledger.books (owner, asset, is_customer) VALUES ($1, $2, $3)
                ON CONFLICT (owner, asset) DO NOTHING RETURNING book_id
            ), bal AS (
                INSERT INTO ledger.balances (book_id) SELECT book_id FROM new WHERE $3
            )
            SELECT book_id FROM new
            UNION ALL SELECT book_id FROM ledger.books WHERE owner = $1 AND asset = $2
            """,
            ref.owner, ref.asset, ref.is_customer,
        )
        if book_id is None:  # created by a concurrent transaction not yet visible: wait for it
            book_id = await self.conn.fetchval(
                "SELECT book_id FROM ledger.books WHERE owner = $1 AND asset = $2", ref.owner, ref.asset)
        self._book_ids[ref] = book_id
        return book_id

    async def claim_key(self, entry: JournalEntry) -> Decimal | None:
        """Record the entry header. None when it is new; else the amount of the entry that
        already holds this idempotency key (waiting for an in-flight one to commit)."""
        inserted = await self.conn.fetchval(
            """
            INSERT INTO ledger.entries (entry_id, kind, account_id, idempotency_key, amount, asset, description)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            ON CONFLICT (account_id, kind, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
            RETURNING entry_id
            """,
            entry.entry_id, entry.kind, entry.account_id, entry.idempotency_key, entry.amount,
            entry.asset, entry.description,
        )
        if inserted is not None:
            return None
        return await self.conn.fetchval(
            "SELECT amount FROM ledger.entries WHERE account_id = $1 AND kind = $2 AND idempotency_key = $3",
            entry.account_id, entry.kind, entry.idempotency_key,
        )

    async def post(self, entry: JournalEntry) -> None:
        """Write the entry's postings and move the customer balances. A debit beyond a
        customer's available balance raises InsufficientFunds (the CHECK constraint on
        ledger.balances is the backstop)."""
        for p in entry.postings:
            book_id = await self.book_id(p.book)
            await self.conn.execute(
                "INSERT INTO ledger.postings (entry_id, book_id, asset, amount) VALUES ($1, $2, $3, $4)",
                entry.entry_id, book_id, p.book.asset, p.amount)
            if p.book.is_customer:
                moved = await self.conn.fetchval(
                    """
                    UPDATE ledger.balances SET posted = posted + $2
                     WHERE book_id = $1 AND posted + $2 - held >= 0
                    RETURNING book_id
                    """, book_id, p.amount)
                if moved is None:
                    available = await self.conn.fetchval(
                        "SELECT posted - held FROM ledger.balances WHERE book_id = $1", book_id)
                    raise InsufficientFunds(
                        f"available {p.book.asset} is {available or 0}, less than {-p.amount}",
                        metadata={"available": str(available or 0), "requested": str(-p.amount)})
        await audit.append(self.conn, f"ledger:{entry.account_id}", entry.kind, {
            "entryId": str(entry.entry_id), "account": entry.account_id, "asset": entry.asset,
            "amount": entry.amount, "key": entry.idempotency_key,
            "postings": [[p.book.owner, p.book.asset, p.amount] for p in entry.postings],
        })

    async def cash(self, account_id: str) -> CashBalance:
        row = await self.conn.fetchrow(
            """
            SELECT b.posted, b.held FROM ledger.balances b
              JOIN ledger.books k USING (book_id)
             WHERE k.owner = $1 AND k.asset = $2
            """, account_id, CASH)
        if row is None:
            return CashBalance.of(Decimal(0), Decimal(0))
        return CashBalance.of(row["posted"], row["held"])

    async def activities(self, account_id: str, after: int | None, limit: int) -> list[ActivityRow]:
        rows = await self.conn.fetch(
            """
            SELECT p.posting_id, e.kind, p.asset, p.amount, e.description,
                   coalesce(e.reference, e.idempotency_key, '') AS reference, p.created_at
              FROM ledger.postings p
              JOIN ledger.books k USING (book_id)
              JOIN ledger.entries e USING (entry_id)
             WHERE k.owner = $1 AND ($2::bigint IS NULL OR p.posting_id < $2)
             ORDER BY p.posting_id DESC
             LIMIT $3
            """, account_id, after, limit)
        return [ActivityRow(**dict(r)) for r in rows]

