"""The ledger's only SQL."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Iterable, NamedTuple

import asyncpg

from meshkit import audit
from meshkit.db import lock_wait_text, sets_lock_wait
from ledger_svc.domain.model import (CASH, REQUEST_KINDS, Balance, BookRef, CashBalance, ClientKeyHolder, FillMemo,
                                     Hold,
                                     HoldStatus, HoldTransfer, JournalEntry, KeyHolder, TransferStatus, insufficient,
                                     key_kinds)



def _placement(r: asyncpg.Record) -> tuple[str, Hold | ClientKeyHolder | None, Decimal | None]:
    """ledger.place_hold_keyed_v2's answer: (outcome, the hold unless INSUFFICIENT, what is
    available); for KEY_TAKEN what carries the key (a hold, or an order without one: 0023); for
    KEPT the order itself, its key kept without a hold."""
    if r["r_outcome"] == "INSUFFICIENT":
        return "INSUFFICIENT", None, r["r_available"]
    if r["r_outcome"] in ("KEY_TAKEN", "KEPT"):
        return r["r_outcome"], ClientKeyHolder(r["r_order_id"], r["r_hold_id"] or "", r["r_status"] or ""), None
    return r["r_outcome"], Hold(
        hold_id=r["r_hold_id"], account_id=r["r_account_id"], order_id=r["r_order_id"], asset=r["r_asset"],
        amount=r["r_amount"], captured=r["r_captured"], released=r["r_released"],
        status=HoldStatus(r["r_status"]), created_at=r["r_created_at"],
        resolved_at=r["r_resolved_at"]), r["r_available"]


def entry_event(entry: JournalEntry, audit_type: str | None = None, audit_extra: dict | None = None
                ) -> tuple[str, str, dict]:
    """The audit event (stream, type, payload) of a posted entry: `audit_type` (default: the
    entry's kind) with `audit_extra` added."""
    payload = {
        "entryId": str(entry.entry_id), "account": entry.account_id, "asset": entry.asset,
        "amount": entry.amount, "key": entry.idempotency_key,
        "postings": [[p.book.owner, p.book.asset, p.amount] for p in entry.postings],
    }
    return f"ledger:{entry.account_id}", audit_type or entry.kind, {**payload, **(audit_extra or {})}


def hold_event(hold: Hold, event_type: str, extra: dict) -> tuple[str, str, dict]:
    """The audit event (stream, type, payload) of a change of a hold."""
    return f"ledger:{hold.account_id}", event_type, {
        "holdId": hold.hold_id, "account": hold.account_id, "orderId": hold.order_id,
        "asset": hold.asset, "amount": hold.amount, "captured": hold.captured,
        "released": hold.released, "status": hold.status.value, **extra,
    }


class ActivityRow(NamedTuple):
    """A line of the account's statement: one of its postings, or a sale's proceeds owed until
    settlement (kind PROCEEDS). `own`: the entry is the account's own (a trade's capture of the
    other side's hold is not); `settled_at`: when the amount settled (a posting when it was
    made, proceeds when settlement paid them), None while it has not."""
    activity_id: int
    kind: str
    asset: str
    amount: Decimal
    description: str
    reference: str
    created_at: datetime
    own: bool = True
    settled_at: datetime | None = None

    @property
    def settled(self) -> bool:
        return self.settled_at is not None


_HOLD_COLUMNS = ("hold_id, account_id, order_id, asset, amount, captured, released, status, created_at, resolved_at, "
                 "filled, notional")


def _hold(row: asyncpg.Record) -> Hold:
    return Hold(hold_id=row["hold_id"], account_id=row["account_id"], order_id=row["order_id"],
                asset=row["asset"], amount=row["amount"], captured=row["captured"], released=row["released"],
                status=HoldStatus(row["status"]), created_at=row["created_at"], resolved_at=row["resolved_at"],
                filled=row["filled"], notional=row["notional"])


_TRANSFER_COLUMNS = ("from_hold_id, to_hold_id, order_id, account_id, asset, unit_amount, reserve, status, moved, "
                     "new_amount")


def _transfer(row: asyncpg.Record) -> HoldTransfer:
    return HoldTransfer(from_hold_id=row["from_hold_id"], to_hold_id=row["to_hold_id"], order_id=row["order_id"],
                        account_id=row["account_id"], asset=row["asset"], unit_amount=row["unit_amount"],
                        reserve=row["reserve"], status=TransferStatus(row["status"]), moved=row["moved"],
                        new_amount=row["new_amount"])


class HoldRow(NamedTuple):
    hold_seq: int
    hold: Hold
    transferred_to: str | None = None  # the hold a completed replace moved what it released to


class CaptureRow(NamedTuple):
    hold_id: str
    capture_id: str
    amount: Decimal
    entry_id: object
    counter_account_id: str


class LedgerRepository:
    def __init__(self, conn: asyncpg.Connection, book_ids: dict[BookRef, int] | None = None) -> None:
        """`book_ids`: (owner, asset) -> book_id of committed books, shared by the transactions
        on one database (LedgerUnitOfWork keeps one per pool). Books are never deleted, so it
        never goes stale, but it holds only ids known to be committed: a book created by a
        transaction that then rolls back (a refused withdrawal or hold) does not exist, and its
        id must not be reused. Without one, nothing is cached beyond this transaction."""
        self.conn = conn
        self._book_ids = book_ids if book_ids is not None else {}
        self._created: dict[BookRef, int] = {}  # books this transaction created

    async def lock_accounts(self, accounts: Iterable[str], lock_wait: float | None = None) -> None:
        """Lock these customer accounts for the rest of the transaction, in account order (see
        migration 0007: every ledger transaction takes its accounts first, then their rows).
        `lock_wait`: as _lock."""
        wanted = sorted({a for a in accounts if a and BookRef(a, "").is_customer})
        if wanted:
            await self._lock("$1::text[]", [wanted], lock_wait)

    async def held_accounts(self, accounts: Iterable[str], timeout: float) -> set[str]:
        """Which of these accounts another transaction holds right now, by its lock (migration
        0007's audit head) or a balance row of one of its books (what placing a hold takes),
        found without waiting for any row (SKIP LOCKED). The probe's own locks are shared ones
        (FOR SHARE), so two probes never see each other; a probe kept waiting `timeout` seconds
        (a table locked by a migration, say) raises TimeoutError. An account without a head or
        books yet is free. A lock held for a moment (a fill's) is held too, at that moment."""
        wanted = sorted(set(accounts))
        rows = await self.conn.fetch(
            """
            WITH free_heads AS (
                SELECT stream FROM audit.heads WHERE stream = ANY($1) FOR SHARE SKIP LOCKED
            ), free_books AS (
                SELECT b.book_id FROM ledger.balances b JOIN ledger.books k USING (book_id)
                 WHERE k.owner = ANY($2) FOR SHARE OF b SKIP LOCKED
            )
            SELECT substr(h.stream, 8) AS account_id FROM audit.heads h
             WHERE h.stream = ANY($1) AND h.stream NOT IN (SELECT stream FROM free_heads)
            UNION
            SELECT k.owner FROM ledger.books k JOIN ledger.balances b USING (book_id)
             WHERE k.owner = ANY($2) AND b.book_id NOT IN (SELECT book_id FROM free_books)
            """, [f"ledger:{a}" for a in wanted], wanted, timeout=timeout)
        return {r["account_id"] for r in rows}

    async def holds_by_id(self, hold_ids: Iterable[str]) -> dict[str, Hold]:
        """The holds placed under these ids (read without locking them)."""
        rows = await self.conn.fetch(f"SELECT {_HOLD_COLUMNS} FROM ledger.holds WHERE hold_id = ANY($1)",
                                     sorted(set(hold_ids)))
        return {r["hold_id"]: _hold(r) for r in rows}

    async def lock_hold_accounts(self, hold_id: str, others: Iterable[str] = (),
                                 lock_wait: float | None = None) -> None:
        """lock_accounts for the hold's owner, looked up in the same statement, and `others`."""
        await self._lock_with_owner("SELECT account_id FROM ledger.holds WHERE hold_id = $1", hold_id, others,
                                    lock_wait)

    async def lock_transfer_account(self, to_hold_id: str, lock_wait: float | None = None) -> None:
        """lock_accounts for the account of the hold transfer to `to_hold_id`, in one statement."""
        await self._lock_with_owner("SELECT account_id FROM ledger.hold_transfers WHERE to_hold_id = $1",
                                    to_hold_id, (), lock_wait)

    async def _lock_with_owner(self, owner_sql: str, key: str, others: Iterable[str],
                               lock_wait: float | None) -> None:
        wanted = sorted({a for a in others if a and BookRef(a, "").is_customer})
        # No such row: its owner is NULL, and dropped.
        await self._lock(f"array_remove($2::text[] || ({owner_sql}), NULL)", [key, wanted], lock_wait)

    async def _lock(self, accounts_sql: str, args: list, lock_wait: float | None) -> None:
        """ledger.lock_accounts(`accounts_sql`) in one statement. With `lock_wait` (seconds), no
        lock of the rest of the transaction is waited for longer, these accounts' included:
        lock_timeout set, transaction-local, by this very statement before it locks anything
        (its WHERE is a one-time filter, evaluated before the select list; no round trip of its
        own), and a wait beyond it raises asyncpg's LockNotAvailableError with nothing done
        (handlers.bounded answers it UNAVAILABLE ACCOUNT_BUSY)."""
        sql = f"SELECT ledger.lock_accounts({accounts_sql})"
        if lock_wait is not None:
            args = [*args, lock_wait_text(lock_wait)]
            sql += f" WHERE {sets_lock_wait(f'${len(args)}')}"
        await self.conn.execute(sql, *args)

    async def book_id(self, ref: BookRef) -> int:
        """The book's id, made when missing (book_ids of one)."""
        return (await self.book_ids([ref]))[ref]

    async def book_ids(self, refs: Iterable[BookRef]) -> dict[BookRef, int]:
        """book_id of each of `refs`, those not known yet looked up, and made when missing, in
        one statement (a run's books, however many: round 21 review, a statement per book not
        known was 8 of a cold run's 24).

        Books are made in (owner, asset) order, so two transactions making some of the same
        books never wait for each other in a cycle. One made by a concurrent transaction that
        commits meanwhile is neither made nor seen by the statement (its snapshot is older):
        those are read again once, as book_id does for one."""
        out: dict[BookRef, int] = {}
        wanted: list[BookRef] = []
        for ref in sorted(set(refs), key=lambda r: (r.owner, r.asset)):
            cached = self._book_ids.get(ref) or self._created.get(ref)
            if cached is not None:
                out[ref] = cached
            else:
                wanted.append(ref)
        if not wanted:
            return out
        rows = await self.conn.fetch(
            """
            WITH k AS (
                SELECT * FROM unnest($1::text[], $2::text[], $3::bool[]) AS k(owner, asset, is_customer)
            ), new AS (
                INSERT INTO ledger.books (owner, asset, is_customer)
                SELECT owner, asset, is_customer FROM k ORDER BY owner, asset
                ON CONFLICT (owner, asset) DO NOTHING RETURNING book_id, owner, asset, is_customer
            ), bal AS (
                INSERT INTO ledger.balances (book_id) SELECT book_id FROM new WHERE is_customer
            )
            SELECT owner, asset, book_id, true AS created FROM new
            UNION ALL SELECT b.owner, b.asset, b.book_id, false FROM ledger.books b JOIN k USING (owner, asset)
            """, [r.owner for r in wanted], [r.asset for r in wanted], [r.is_customer for r in wanted])
        for r in rows:
            ref = BookRef(r["owner"], r["asset"])
            out[ref] = r["book_id"]
            (self._created if r["created"] else self._book_ids)[ref] = r["book_id"]
        late = [ref for ref in wanted if ref not in out]
        if late:  # made by a concurrent transaction not visible to the statement: committed now
            for r in await self.conn.fetch(
                    "SELECT k.owner, k.asset, b.book_id FROM unnest($1::text[], $2::text[]) AS k(owner, asset) "
                    "JOIN ledger.books b USING (owner, asset)", [r.owner for r in late], [r.asset for r in late]):
                ref = BookRef(r["owner"], r["asset"])
                out[ref] = self._book_ids[ref] = r["book_id"]
        return out

    async def find_book_id(self, ref: BookRef) -> int | None:
        """The book's id, or None when it does not exist (never creates one)."""
        cached = self._book_ids.get(ref) or self._created.get(ref)
        if cached is not None:
            return cached
        book_id = await self.conn.fetchval(
            "SELECT book_id FROM ledger.books WHERE owner = $1 AND asset = $2", ref.owner, ref.asset)
        if book_id is not None:
            self._book_ids[ref] = book_id
        return book_id

    async def claim_key(self, entry: JournalEntry) -> KeyHolder | None:
        """Record the entry header. None when it is new; else the entry that already holds this
        idempotency key (waiting for an in-flight one to commit).

        A customer's request (model.REQUEST_KINDS) shares its key with the account's requests
        of every kind. Call it under the account's lock (lock_accounts): the look-up then sees
        every request of the account committed before, including those recorded before
        migration 0009 without a request_key; entries_request_key is the database's own
        guarantee for those after it."""
        kinds = list(key_kinds(entry.kind))
        if len(kinds) > 1:
            holder = await self._key_holder(entry, kinds)
            if holder is not None:
                return holder
        inserted = await self.conn.fetchval(
            """
            INSERT INTO ledger.entries (entry_id, kind, account_id, idempotency_key, amount, asset, description,
                                        reference, request_key)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
            ON CONFLICT DO NOTHING
            RETURNING entry_id
            """,
            entry.entry_id, entry.kind, entry.account_id, entry.idempotency_key, entry.amount,
            entry.asset, entry.description, entry.reference,
            entry.idempotency_key if entry.kind in REQUEST_KINDS else None,
        )
        if inserted is not None:
            return None
        holder = await self._key_holder(entry, kinds)
        assert holder is not None, "an entry conflicted on its idempotency key, yet none holds it"
        return holder

    async def _key_holder(self, entry: JournalEntry, kinds: list[str]) -> KeyHolder | None:
        # An account may hold two requests under one key from before migration 0009: the one of
        # the entry's own kind answers first, so a retry of either is still a retry.
        row = await self.conn.fetchrow(
            """
            SELECT kind, amount, asset FROM ledger.entries
             WHERE account_id = $1 AND kind = ANY($2::text[]) AND idempotency_key = $3
             ORDER BY kind <> $4, created_at LIMIT 1
            """, entry.account_id, kinds, entry.idempotency_key, entry.kind)
        return None if row is None else KeyHolder(row["kind"], row["amount"], row["asset"])

    async def post(self, entry: JournalEntry, *, from_held: BookRef | None = None,
                   audit_type: str | None = None, audit_extra: dict | None = None) -> None:
        """Write the entry's postings and move the customer balances. A debit beyond a
        customer's available balance raises InsufficientFunds / InsufficientShares (the CHECK
        constraint on ledger.balances is the backstop).

        `from_held`: the book whose debit comes out of what it holds (a hold capture): its
        held drops with its posted, so its available balance does not change.
        The audit event is `audit_type` (default: the entry's kind) with `audit_extra` added."""
        moves: list[tuple[int, BookRef, Decimal]] = []
        for p in entry.postings:
            book_id = await self.book_id(p.book)
            await self.conn.execute(
                "INSERT INTO ledger.postings (entry_id, book_id, asset, amount) VALUES ($1, $2, $3, $4)",
                entry.entry_id, book_id, p.book.asset, p.amount)
            if p.book.is_customer:
                moves.append((book_id, p.book, p.amount))
        # Balance rows are locked in book order, so two entries between the same two
        # customers (A pays B while B pays A) never deadlock.
        for book_id, ref, amount in sorted(moves, key=lambda m: m[0]):
            held_delta = amount if ref == from_held else Decimal(0)
            moved = await self.conn.fetchval(
                """
                UPDATE ledger.balances SET posted = posted + $2, held = held + $3
                 WHERE book_id = $1 AND (posted + $2) - (held + $3) >= 0
                RETURNING book_id
                """, book_id, amount, held_delta)
            if moved is None:
                available = await self.conn.fetchval(
                    "SELECT posted - held FROM ledger.balances WHERE book_id = $1", book_id)
                raise insufficient(ref.asset, available or Decimal(0), -amount)
        await audit.append(self.conn, *entry_event(entry, audit_type, audit_extra))

    async def add_entry(self, entry: JournalEntry) -> None:
        """Record an entry header that needs no idempotency key of its own (its caller has one)."""
        await self.conn.execute(
            """
            INSERT INTO ledger.entries (entry_id, kind, account_id, idempotency_key, amount, asset, description,
                                        reference)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            """,
            entry.entry_id, entry.kind, entry.account_id, entry.idempotency_key, entry.amount,
            entry.asset, entry.description, entry.reference)

    async def balance(self, owner: str, asset: str) -> Balance:
        """A customer book's posted and held (zero for a book that does not exist)."""
        row = await self.conn.fetchrow(
            """
            SELECT b.posted, b.held FROM ledger.balances b
              JOIN ledger.books k USING (book_id)
             WHERE k.owner = $1 AND k.asset = $2
            """, owner, asset)
        return Balance() if row is None else Balance(posted=row["posted"], held=row["held"])

    async def accounts_holding(self, accounts: Iterable[str]) -> set[str]:
        """Those of `accounts` with something held (a pending hold) in any of their books."""
        rows = await self.conn.fetch(
            """
            SELECT DISTINCT k.owner FROM ledger.books k JOIN ledger.balances b USING (book_id)
             WHERE k.owner = ANY($1::text[]) AND b.held > 0
            """, list(accounts))
        return {r["owner"] for r in rows}

    async def cash(self, account_id: str) -> CashBalance:
        row = await self.conn.fetchrow(
            """
            SELECT coalesce((SELECT b.posted FROM ledger.balances b JOIN ledger.books k USING (book_id)
                              WHERE k.owner = $1 AND k.asset = $2), 0) AS posted,
                   coalesce((SELECT b.held FROM ledger.balances b JOIN ledger.books k USING (book_id)
                              WHERE k.owner = $1 AND k.asset = $2), 0) AS held,
                   coalesce((SELECT sum(amount) FROM ledger.unsettled
                              WHERE account_id = $1 AND settled_at IS NULL), 0) AS unsettled
            """, account_id, CASH)
        return CashBalance.of(row["posted"], row["held"], row["unsettled"])

    async def save_reply(self, entry: JournalEntry, cash: CashBalance) -> None:
        """What a cash request answered (migration 0016), for its retries to answer too."""
        await self.conn.execute(
            "INSERT INTO ledger.request_replies (account_id, request_key, kind, total, available, held, settled, "
            "unsettled) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
            entry.account_id, entry.idempotency_key, entry.kind, cash.total, cash.available, cash.held, cash.settled,
            cash.unsettled)

    async def reply(self, entry: JournalEntry) -> CashBalance | None:
        row = await self.conn.fetchrow(
            "SELECT total, available, held, settled, unsettled FROM ledger.request_replies "
            "WHERE account_id = $1 AND request_key = $2 AND kind = $3", entry.account_id, entry.idempotency_key,
            entry.kind)
        return None if row is None else CashBalance(**row)

    async def activities(self, account_id: str, after: int | None, limit: int) -> list[ActivityRow]:
        """The account's statement, newest first, below `after`: its postings, and each sale's
        proceeds from the moment of the sale (ledger.unsettled, migration 0011) — whose
        settlement is then left out, so the USD lines always sum to the cash total. A posting
        is settled when it is made; proceeds when settlement marked their row."""
        rows = await self.conn.fetch(
            """
            SELECT * FROM (
                SELECT p.posting_id AS activity_id, e.kind, p.asset, p.amount, e.description,
                       coalesce(e.reference, e.idempotency_key, '') AS reference, p.created_at,
                       e.account_id = $1 AS own, p.created_at AS settled_at
                  FROM ledger.postings p
                  JOIN ledger.books k USING (book_id)
                  JOIN ledger.entries e USING (entry_id)
                 WHERE k.owner = $1 AND ($2::bigint IS NULL OR p.posting_id < $2)
                   AND NOT (e.kind = 'SETTLEMENT' AND EXISTS (
                            SELECT 1 FROM ledger.unsettled u WHERE u.fill_id = e.reference AND u.activity_id IS NOT NULL))
                UNION ALL
                SELECT u.activity_id, 'PROCEEDS', $4, u.amount, coalesce(u.description, ''), u.fill_id, u.created_at,
                       true, u.settled_at
                  FROM ledger.unsettled u
                 WHERE u.account_id = $1 AND u.activity_id IS NOT NULL AND ($2::bigint IS NULL OR u.activity_id < $2)
            ) a
             ORDER BY activity_id DESC
             LIMIT $3
            """, account_id, after, limit, CASH)
        return [ActivityRow(**dict(r)) for r in rows]


    # --- holds -------------------------------------------------------------------------

    async def get_hold(self, hold_id: str, *, for_update: bool = False) -> Hold | None:
        row = await self.conn.fetchrow(
            f"SELECT {_HOLD_COLUMNS} FROM ledger.holds WHERE hold_id = $1" + (" FOR UPDATE" if for_update else ""),
            hold_id)
        return None if row is None else _hold(row)

    async def unchecked_holds(self, older_than: float, limit: int, after: tuple[datetime, str] | None = None,
                              orphan_age: float = 0) -> list[tuple[Hold, bool]]:
        """Pending unchecked holds placed more than `older_than` seconds ago, by (created_at,
        hold_id), after the cursor `after` (a hold's created_at and hold_id) if given; each with
        whether it was placed more than `orphan_age` seconds ago (the database's clock)."""
        # The cursor's created_at bound on its own as well: the index (migration 0006) is on
        # created_at alone. A statement without a cursor rather than "$3 IS NULL OR": a
        # prepared statement's generic plan could not use the index for that.
        cursor = ("AND created_at >= $4 AND (created_at, hold_id) > ($4, $5) " if after else "")
        rows = await self.conn.fetch(
            f"SELECT {_HOLD_COLUMNS}, created_at < now() - make_interval(secs => $3) AS past_orphan_age "
            "FROM ledger.holds WHERE NOT order_checked AND status = 'PENDING' "
            f"AND created_at < now() - make_interval(secs => $1) {cursor}ORDER BY created_at, hold_id LIMIT $2",
            older_than, limit, orphan_age, *(after or ()))
        return [(_hold(r), r["past_orphan_age"]) for r in rows]

    async def mark_checked(self, hold_ids: list[str]) -> None:
        # Pending holds only: a hold that resolved meanwhile (released by the reaper itself, or
        # captured) needs no mark, and a resolved hold's row refuses every change. A hold whose
        # row another transaction holds (a fill capturing it) is left for the next round
        # rather than waited for: this statement takes no account first (migration 0007).
        await self.conn.execute(
            """
            UPDATE ledger.holds SET order_checked = true
             WHERE hold_id IN (SELECT hold_id FROM ledger.holds
                                WHERE hold_id = ANY($1) AND NOT order_checked AND status = 'PENDING'
                                  FOR UPDATE SKIP LOCKED)
            """, hold_ids)

    async def place_holds(self, holds: list[Hold], client_keys: list[str | None], lock_wait: float,
                          answer_kept: list[bool] | None = None
                          ) -> list[tuple[str, Hold | ClientKeyHolder | None, Decimal | None]]:
        """Place holds one after the other, in the order given, in one statement (so in one
        transaction): each as ledger.place_hold_keyed places one (migration 0012: its account
        first, then the idempotent insert, the conditional reservation and the audit event),
        answered ('PLACED', the hold, _), ('EXISTS', the hold placed before under this id, _),
        ('KEY_TAKEN', what carries its client key: the account's other hold, or another order
        without a hold, _), ('KEPT', the order itself, _: its key kept without a hold, asked
        with `answer_kept` true at its index; nothing held) or ('INSUFFICIENT', None, what is
        available), a refusal changing nothing but keeping the client key for its order
        (migration 0023); waiting at most
        `lock_wait` seconds for any lock (migration 0019), else raising asyncpg's
        LockNotAvailableError with nothing changed. (A hold alone is a batch of one.)"""
        rows = await self.conn.fetch(
            "SELECT * FROM ledger.place_holds_keyed_v2($1, $2, $3, $4, $5, $6, $7, $8) ORDER BY r_n",
            lock_wait_text(lock_wait), [h.hold_id for h in holds], [h.account_id for h in holds],
            [h.order_id for h in holds], [h.asset for h in holds], [h.amount for h in holds], client_keys,
            answer_kept if answer_kept is not None else [False] * len(holds))
        return [_placement(r) for r in rows]

    async def register_client_keys(self, keys: list[tuple[str, str, str]], lock_wait: float
                                   ) -> list[ClientKeyHolder | None]:
        """Record each (account, client key, order id) for its order, in the order given, in
        one statement (migration 0023: the accounts taken first, waiting at most `lock_wait`
        for any lock, else asyncpg's LockNotAvailableError with nothing changed): None when
        the key is that order's now (or was before), else what carries it for another order."""
        rows = await self.conn.fetch(
            "SELECT * FROM ledger.register_client_keys($1, $2, $3, $4) ORDER BY r_n", lock_wait_text(lock_wait),
            [a for a, _, _ in keys], [k for _, k, _ in keys], [o for _, _, o in keys])
        return [None if r["r_order_id"] is None else ClientKeyHolder(r["r_order_id"], r["r_hold_id"] or "",
                                                                      r["r_status"] or "") for r in rows]

    async def keep_client_key(self, account_id: str, client_key: str, order_id: str) -> None:
        """The key is `order_id`'s unless the account has it for an order already (migration
        0023; the account's lock held)."""
        await self.conn.execute(
            "INSERT INTO ledger.client_keys (account_id, client_key, order_id) VALUES ($1, $2, $3) "
            "ON CONFLICT (account_id, client_key) DO NOTHING", account_id, client_key, order_id)

    async def insert_hold(self, hold: Hold, book_id: int) -> Hold | None:
        """Record a new PENDING hold (with the fills it carries: a replacement's, those of the
        order it replaces); None when the hold id is taken (waiting for an in-flight insert of
        the same id to commit or roll back first)."""
        row = await self.conn.fetchrow(
            f"""
            INSERT INTO ledger.holds (hold_id, account_id, book_id, order_id, asset, amount, filled, notional)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            ON CONFLICT (hold_id) DO NOTHING
            RETURNING {_HOLD_COLUMNS}
            """, hold.hold_id, hold.account_id, book_id, hold.order_id, hold.asset, hold.amount, hold.filled,
            hold.notional)
        return None if row is None else _hold(row)

    async def reserve(self, book_id: int, asset: str, amount: Decimal) -> None:
        """held += amount, only while that much is available (a conditional UPDATE: racing
        holds on one book queue on its row and each sees the previous one's result)."""
        moved = await self.conn.fetchval(
            """
            UPDATE ledger.balances SET held = held + $2
             WHERE book_id = $1 AND posted - held >= $2
            RETURNING book_id
            """, book_id, amount)
        if moved is None:
            available = await self.conn.fetchval(
                "SELECT posted - held FROM ledger.balances WHERE book_id = $1", book_id)
            raise insufficient(asset, available or Decimal(0), amount)

    async def unreserve(self, hold_id: str, amount: Decimal) -> None:
        """held -= amount on the hold's book (a release)."""
        await self.conn.execute(
            """
            UPDATE ledger.balances SET held = held - $2
             WHERE book_id = (SELECT book_id FROM ledger.holds WHERE hold_id = $1)
            """, hold_id, amount)

    async def save_hold(self, hold: Hold) -> Hold:
        """Write a hold's progress (captured, released, status, and its order's fills counted:
        filled, notional); resolved_at is set by the database the one time the hold leaves
        PENDING."""
        row = await self.conn.fetchrow(
            f"""
            UPDATE ledger.holds
               SET captured = $2, released = $3, status = $4,
                   resolved_at = CASE WHEN $4 <> 'PENDING' THEN now() END, filled = $5, notional = $6
             WHERE hold_id = $1
            RETURNING {_HOLD_COLUMNS}
            """, hold.hold_id, hold.captured, hold.released, hold.status.value, hold.filled, hold.notional)
        return _hold(row)

    async def count_fill(self, hold_id: str, fill: FillMemo) -> None:
        """Hold.count_fill of a pending hold that the fill captures nothing of (a buy's fill
        worth less than a cent: fill_cash); a resolved hold, or none, is left as it is."""
        await self.conn.execute(
            "UPDATE ledger.holds SET filled = filled + $2, notional = notional + $3 "
            "WHERE hold_id = $1 AND status = 'PENDING'", hold_id, fill.quantity, fill.price * fill.quantity)

    async def get_capture(self, hold_id: str, capture_id: str) -> CaptureRow | None:
        row = await self.conn.fetchrow(
            """
            SELECT hold_id, capture_id, amount, entry_id, counter_account_id
              FROM ledger.hold_captures WHERE hold_id = $1 AND capture_id = $2
            """, hold_id, capture_id)
        return None if row is None else CaptureRow(**dict(row))

    async def add_capture(self, hold_id: str, capture_id: str, amount: Decimal, entry_id: object,
                          counter_account_id: str) -> None:
        await self.conn.execute(
            """
            INSERT INTO ledger.hold_captures (hold_id, capture_id, amount, entry_id, counter_account_id)
            VALUES ($1, $2, $3, $4, $5)
            """, hold_id, capture_id, amount, entry_id, counter_account_id)

    async def audit_hold(self, hold: Hold, event_type: str, extra: dict) -> None:
        await audit.append(self.conn, *hold_event(hold, event_type, extra))

    # --- a run of executions, in a few statements (settlement._apply_run) ----------------

    entry_event = staticmethod(entry_event)
    hold_event = staticmethod(hold_event)

    async def append_events(self, events: list[tuple[str, str, dict]]) -> None:
        """Audit events (stream, type, payload), in the order given, in one statement."""
        await audit.append_many(self.conn, events)

    async def lock_holds(self, hold_ids: Iterable[str]) -> dict[str, Hold]:
        """The holds of these ids that exist, locked (in id order), in one statement; their
        books' ids are then known (book_id and book_ids look up none of them)."""
        rows = await self.conn.fetch(
            f"SELECT {_HOLD_COLUMNS}, book_id FROM ledger.holds WHERE hold_id = ANY($1::text[]) ORDER BY hold_id "
            "FOR UPDATE", sorted(set(hold_ids)))
        for r in rows:
            ref = BookRef(r["account_id"], r["asset"])
            if ref not in self._created:  # else made by this transaction: not known to be committed
                self._book_ids[ref] = r["book_id"]
        return {r["hold_id"]: _hold(r) for r in rows}

    async def any_capture(self, keys: list[tuple[str, str]]) -> bool:
        """Whether any of these (hold_id, capture_id) was captured before."""
        return bool(await self.conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM ledger.hold_captures c JOIN unnest($1::text[], $2::text[]) AS k(h, c_id) "
            "ON c.hold_id = k.h AND c.capture_id = k.c_id)", [k[0] for k in keys], [k[1] for k in keys]))

    async def posting_ids(self, n: int) -> list[int]:
        """`n` ids of the postings' sequence, ascending (postings and proceeds lines share it:
        a statement lists them in its order)."""
        return sorted(await self.conn.fetchval(
            "SELECT array_agg(nextval('ledger.postings_posting_id_seq')) FROM generate_series(1, $1)", n))

    async def add_entries(self, entries: list[JournalEntry]) -> None:
        """add_entry of many in one statement."""
        await self.conn.execute(
            """
            INSERT INTO ledger.entries (entry_id, kind, account_id, idempotency_key, amount, asset, description,
                                        reference)
            SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::numeric[], $6::text[],
                                 $7::text[], $8::text[])
            """, *(list(c) for c in zip(*((e.entry_id, e.kind, e.account_id, e.idempotency_key, e.amount, e.asset,
                                           e.description, e.reference) for e in entries))))

    async def add_postings(self, rows: list[tuple[int, object, int, str, Decimal]]) -> None:
        """Postings (posting_id, entry_id, book_id, asset, amount) in one statement."""
        await self.conn.execute(
            "INSERT INTO ledger.postings (posting_id, entry_id, book_id, asset, amount) "
            "SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::bigint[], $4::text[], $5::numeric[])",
            *(list(c) for c in zip(*rows)))

    async def move_balances(self, moves: dict[int, tuple[Decimal, Decimal]]) -> None:
        """posted += and held += on each customer book (book_id -> the two deltas), in one
        statement, in book order; the balances' CHECK constraints refuse a negative result."""
        books = sorted(moves)
        status = await self.conn.execute(
            """
            UPDATE ledger.balances b SET posted = b.posted + v.posted, held = b.held + v.held
              FROM unnest($1::bigint[], $2::numeric[], $3::numeric[]) AS v(book_id, posted, held)
             WHERE b.book_id = v.book_id
            """, books, [moves[b][0] for b in books], [moves[b][1] for b in books])
        if status != f"UPDATE {len(books)}":  # post() refuses a book without its balance row
            raise LookupError(f"balances moved: {status}, of {len(books)} books")

    async def add_captures(self, rows: list[tuple[str, str, Decimal, object, str]]) -> None:
        """add_capture of many (hold_id, capture_id, amount, entry_id, counter_account_id)."""
        await self.conn.execute(
            "INSERT INTO ledger.hold_captures (hold_id, capture_id, amount, entry_id, counter_account_id) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::numeric[], $4::uuid[], $5::text[])",
            *(list(c) for c in zip(*rows)))

    async def save_holds(self, holds: list[Hold]) -> None:
        """save_hold of many (each once) in one statement."""
        status = await self.conn.execute(
            """
            UPDATE ledger.holds h SET captured = v.captured, released = v.released, status = v.status,
                   resolved_at = CASE WHEN v.status <> 'PENDING' THEN now() END, filled = v.filled,
                   notional = v.notional
              FROM unnest($1::text[], $2::numeric[], $3::numeric[], $4::text[], $5::bigint[], $6::numeric[])
                   AS v(hold_id, captured, released, status, filled, notional)
             WHERE h.hold_id = v.hold_id
            """, [h.hold_id for h in holds], [h.captured for h in holds], [h.released for h in holds],
            [h.status.value for h in holds], [h.filled for h in holds], [h.notional for h in holds])
        if status != f"UPDATE {len(holds)}":  # save_hold fails on a hold that is not there
            raise LookupError(f"holds saved: {status}, of {len(holds)}")

    async def list_holds(self, account_id: str, before: int | None, limit: int) -> list[HoldRow]:
        rows = await self.conn.fetch(
            f"""
            SELECT h.hold_seq, {", ".join("h." + c for c in _HOLD_COLUMNS.split(", "))}, t.to_hold_id AS transferred_to
              FROM ledger.holds h
              LEFT JOIN LATERAL (
                    SELECT to_hold_id FROM ledger.hold_transfers
                     WHERE status = 'COMPLETED' AND from_hold_id = h.hold_id
                    UNION ALL
                    SELECT to_hold_id FROM ledger.hold_transfers
                     WHERE status = 'COMPLETED' AND reserve_hold_id = h.hold_id
                       AND to_hold_id = left(h.hold_id, -length(':reserve'))
                    LIMIT 1) t ON true
             WHERE h.account_id = $1 AND ($2::bigint IS NULL OR h.hold_seq < $2)
             ORDER BY h.hold_seq DESC
             LIMIT $3
            """, account_id, before, limit)
        return [HoldRow(r["hold_seq"], _hold(r), r["transferred_to"]) for r in rows]

    async def release_held(self, book_id: int, amount: Decimal) -> None:
        """held -= amount on a book (what a completed hold transfer no longer needs)."""
        await self.conn.execute("UPDATE ledger.balances SET held = held - $2 WHERE book_id = $1", book_id, amount)

    # --- hold transfers (ReplaceOrder) --------------------------------------------------

    async def get_transfer(self, to_hold_id: str, *, for_update: bool = False) -> HoldTransfer | None:
        row = await self.conn.fetchrow(
            f"SELECT {_TRANSFER_COLUMNS} FROM ledger.hold_transfers WHERE to_hold_id = $1"
            + (" FOR UPDATE" if for_update else ""), to_hold_id)
        return None if row is None else _transfer(row)

    async def pending_transfer_from(self, from_hold_id: str) -> HoldTransfer | None:
        row = await self.conn.fetchrow(
            f"SELECT {_TRANSFER_COLUMNS} FROM ledger.hold_transfers WHERE from_hold_id = $1 AND status = 'PENDING' "
            "FOR UPDATE", from_hold_id)
        return None if row is None else _transfer(row)

    async def insert_transfer(self, t: HoldTransfer) -> bool:
        """Record a PENDING transfer; False when to_hold_id is taken or another transfer from the
        same hold is pending (waiting for an in-flight insert to commit or roll back first)."""
        return bool(await self.conn.fetchval(
            """
            INSERT INTO ledger.hold_transfers (to_hold_id, from_hold_id, order_id, account_id, asset, unit_amount,
                                               reserve, reserve_hold_id)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            ON CONFLICT DO NOTHING RETURNING true
            """, t.to_hold_id, t.from_hold_id, t.order_id, t.account_id, t.asset, t.unit_amount, t.reserve,
            t.reserve_hold_id))

    async def save_transfer(self, t: HoldTransfer) -> None:
        await self.conn.execute(
            """
            UPDATE ledger.hold_transfers SET status = $2, moved = $3, new_amount = $4, resolved_at = now()
             WHERE to_hold_id = $1 AND status = 'PENDING'
            """, t.to_hold_id, t.status.value, t.moved, t.new_amount)

    async def audit_transfer(self, t: HoldTransfer, event_type: str, extra: dict) -> None:
        await audit.append(self.conn, f"ledger:{t.account_id}", event_type, {
            "fromHoldId": t.from_hold_id, "toHoldId": t.to_hold_id, "orderId": t.order_id, "asset": t.asset,
            "unitAmount": t.unit_amount, "reserve": t.reserve, "status": t.status.value, "moved": t.moved,
            "newAmount": t.new_amount, **extra})
