"""The ledger's cash slice against a real PostgreSQL."""
from __future__ import annotations

import asyncio
import random
import uuid
from decimal import Decimal

import asyncpg
import pytest

from ledger_svc.domain.model import DuplicateIdempotencyKey, InsufficientFunds
from ledger_svc.service_layer import commands, handlers
from ledger_svc.service_layer.unit_of_work import LedgerUnitOfWork

pytestmark = pytest.mark.integration


def account() -> str:
    return f"acct-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def uow(checked_pool):
    return lambda: LedgerUnitOfWork(checked_pool)


async def test_200_concurrent_withdrawals_never_overdraw(uow, checked_pool):
    acct = account()
    start = Decimal("1000.00")
    await handlers.deposit(commands.Deposit(acct, start, "seed"), uow)
    rng = random.Random(7)
    amounts = [Decimal(rng.randint(100, 2500)) / 100 for _ in range(200)]  # 1.00 .. 25.00

    async def withdraw(i: int, amount: Decimal):
        try:
            await handlers.withdraw(commands.Withdraw(acct, amount, f"w{i}"), uow)
            return amount
        except InsufficientFunds:
            return None

    results = await asyncio.gather(*(withdraw(i, a) for i, a in enumerate(amounts)))
    succeeded = [a for a in results if a is not None]
    cash = await handlers.cash_balance(acct, uow)
    assert cash.total >= 0 and cash.available >= 0
    assert sum(succeeded) == start - cash.total
    assert 0 < len(succeeded) < 200  # the race really ran out of money
    # Nothing else slipped past: the smallest failed withdrawal did not fit what is left.
    failed = [a for a, r in zip(amounts, results) if r is None]
    assert min(failed) > cash.available
    async with checked_pool.acquire() as conn:
        n = await conn.fetchval(
            "SELECT count(*) FROM ledger.entries WHERE account_id = $1 AND kind = 'WITHDRAWAL'", acct)
    assert n == len(succeeded)


async def test_same_deposit_key_50_times_concurrently_applies_once(uow, checked_pool):
    acct = account()
    replies = await asyncio.gather(*(
        handlers.deposit(commands.Deposit(acct, Decimal("250.00"), "same-key"), uow) for _ in range(50)))
    assert {r.total for r in replies} == {Decimal("250.00")}
    assert (await handlers.cash_balance(acct, uow)).total == Decimal("250.00")
    async with checked_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM ledger.entries WHERE account_id = $1", acct) == 1


async def test_a_retried_request_answers_what_the_request_answered(uow):
    """Round 15: a deposit retried after another deposit answered the balance at the retry
    (both deposits), not the one the request itself answered; the same for a withdrawal."""
    acct = account()
    first = await handlers.deposit(commands.Deposit(acct, Decimal("100000.00"), "v1"), uow)
    await handlers.deposit(commands.Deposit(acct, Decimal("1.00"), "v2"), uow)
    assert await handlers.deposit(commands.Deposit(acct, Decimal("100000.00"), "v1"), uow) == first
    out = await handlers.withdraw(commands.Withdraw(acct, Decimal("50.00"), "w1"), uow)
    await handlers.deposit(commands.Deposit(acct, Decimal("7.00"), "v3"), uow)
    assert await handlers.withdraw(commands.Withdraw(acct, Decimal("50.00"), "w1"), uow) == out
    assert out.total == Decimal("99951.00") and (await handlers.cash_balance(acct, uow)).total == Decimal("99958.00")


async def test_key_reused_with_another_amount_is_already_exists(uow):
    acct = account()
    await handlers.deposit(commands.Deposit(acct, Decimal("10"), "k"), uow)
    assert (await handlers.deposit(commands.Deposit(acct, Decimal("10.00"), "k"), uow)).total == Decimal("10")
    with pytest.raises(DuplicateIdempotencyKey) as err:
        await handlers.deposit(commands.Deposit(acct, Decimal("11"), "k"), uow)
    assert err.value.code == "ALREADY_EXISTS"
    # Money as the API shows it.
    assert "used for a deposit of 10.00 USD, not a deposit of 11.00 USD" in err.value.message
    # A key names one request of the account, whatever its kind: not a new withdrawal.
    with pytest.raises(DuplicateIdempotencyKey):
        await handlers.withdraw(commands.Withdraw(acct, Decimal("3"), "k"), uow)
    assert (await handlers.cash_balance(acct, uow)).total == Decimal("10")


async def test_a_key_is_one_request_whatever_its_kind(uow, checked_pool):
    acct = account()
    await handlers.deposit(commands.Deposit(acct, Decimal("1000.00"), "d1"), uow)
    for again in (commands.Withdraw(acct, Decimal("10"), "d1"), commands.Withdraw(acct, Decimal("1000"), "d1")):
        with pytest.raises(DuplicateIdempotencyKey) as err:
            await handlers.withdraw(again, uow)
        assert err.value.code == "ALREADY_EXISTS" and err.value.reason == "DUPLICATE_IDEMPOTENCY_KEY"
        assert "was used for a deposit of 1000" in str(err.value) and "not a withdrawal" in str(err.value)
    await handlers.withdraw(commands.Withdraw(acct, Decimal("10"), "w1"), uow)
    with pytest.raises(DuplicateIdempotencyKey):
        await handlers.deposit(commands.Deposit(acct, Decimal("10"), "w1"), uow)
    # Retries of each are still retries (answered as each was), and the key of one account is
    # free for another.
    assert (await handlers.deposit(commands.Deposit(acct, Decimal("1000"), "d1"), uow)).total == Decimal("1000")
    assert (await handlers.withdraw(commands.Withdraw(acct, Decimal("10.00"), "w1"), uow)).total == Decimal("990")
    other = account()
    await handlers.deposit(commands.Deposit(other, Decimal("5"), "w1"), uow)
    assert (await handlers.cash_balance(other, uow)).total == Decimal("5")
    async with checked_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM ledger.entries WHERE account_id = $1", acct) == 2
        with pytest.raises(asyncpg.UniqueViolationError, match="entries_request_key"):  # the database's own rule
            await conn.execute("INSERT INTO ledger.entries (entry_id, kind, account_id, idempotency_key, amount, "
                               "asset, request_key) VALUES ($1, 'WITHDRAWAL', $2, 'd1', 1, 'USD', 'd1')",
                               uuid.uuid4(), acct)


async def test_concurrent_deposits_and_withdrawals_with_one_key_apply_one(uow, checked_pool):
    """Deposits and withdrawals racing with one key: one request wins; the others get its
    answer (the same request) or ALREADY_EXISTS (another one)."""
    acct = account()
    await handlers.deposit(commands.Deposit(acct, Decimal("100.00"), "seed"), uow)

    async def one(i: int):
        cmd = (commands.Deposit if i % 2 else commands.Withdraw)(acct, Decimal("20"), "race")
        try:
            return type(cmd).__name__, await (handlers.deposit if i % 2 else handlers.withdraw)(cmd, uow)
        except DuplicateIdempotencyKey:
            return type(cmd).__name__, None

    results = await asyncio.gather(*(one(i) for i in range(40)))
    winners = {kind for kind, cash in results if cash is not None}
    assert len(winners) == 1  # only the winner's kind got an answer; the other kind all refused
    expected = Decimal("120") if winners == {"Deposit"} else Decimal("80")
    assert {cash.total for _, cash in results if cash is not None} == {expected}
    assert (await handlers.cash_balance(acct, uow)).total == expected
    async with checked_pool.acquire() as conn:
        assert await conn.fetchval(
            "SELECT count(*) FROM ledger.entries WHERE account_id = $1 AND idempotency_key = 'race'", acct) == 1


async def test_migration_0009_keeps_pairs_recorded_before_it(pg_server_url):
    """A ledger that already holds a deposit and a withdrawal under one key (the old rule
    allowed it): the migration applies (and rolls back) without touching them, retries of both
    are still answered as retries, and any other request with the key is ALREADY_EXISTS."""
    from meshkit.migrate import apply_all
    from tests.conftest import fresh_database
    from tests.support.migrations import roll_back

    async with fresh_database(pg_server_url) as url:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
        try:
            make = lambda: LedgerUnitOfWork(pool)  # noqa: E731
            acct = account()
            await handlers.deposit(commands.Deposit(acct, Decimal("100"), "k"), make)
            roll_back(url, "0009.ledger-request-keys")
            async with pool.acquire() as conn, conn.transaction():  # a withdrawal by the old rule
                entry = uuid.uuid4()
                await conn.execute("INSERT INTO ledger.entries (entry_id, kind, account_id, idempotency_key, amount,"
                                   " asset) VALUES ($1, 'WITHDRAWAL', $2, 'k', 10, 'USD')", entry, acct)
                await conn.execute(
                    "INSERT INTO ledger.postings (entry_id, book_id, asset, amount) SELECT $1, book_id, asset, "
                    "CASE WHEN owner = $2 THEN -10 ELSE 10 END FROM ledger.books "
                    "WHERE owner IN ($2, '$external') AND asset = 'USD'", entry, acct)
                await conn.execute("UPDATE ledger.balances SET posted = posted - 10 WHERE book_id = "
                                   "(SELECT book_id FROM ledger.books WHERE owner = $1)", acct)
            await pool.expire_connections()
            assert apply_all(url) == 1
            # The deposit's retry answers what it answered; the withdrawal written by the old rule
            # has no answer kept (recorded before 0016), so its retry answers the balance now.
            assert (await handlers.deposit(commands.Deposit(acct, Decimal("100"), "k"), make)).total == Decimal("100")
            assert (await handlers.withdraw(commands.Withdraw(acct, Decimal("10"), "k"), make)).total == Decimal("90")
            for again in (commands.Withdraw(acct, Decimal("5"), "k"), commands.Deposit(acct, Decimal("5"), "k")):
                with pytest.raises(DuplicateIdempotencyKey):
                    await (handlers.withdraw if isinstance(again, commands.Withdraw) else handlers.deposit)(
                        again, make)
            await handlers.withdraw(commands.Withdraw(acct, Decimal("5"), "new"), make)
            with pytest.raises(DuplicateIdempotencyKey):
                await handlers.deposit(commands.Deposit(acct, Decimal("5"), "new"), make)
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT count(*) FROM ledger.entries WHERE account_id = $1", acct) == 3
                assert await conn.fetchval("SELECT request_key FROM ledger.entries WHERE account_id = $1 "
                                           "AND idempotency_key = 'new'", acct) == "new"
        finally:
            await pool.close()


async def test_withdrawal_beyond_available_changes_nothing(uow, checked_pool):
    acct = account()
    await handlers.deposit(commands.Deposit(acct, Decimal("5.00"), "d"), uow)
    with pytest.raises(InsufficientFunds) as err:
        await handlers.withdraw(commands.Withdraw(acct, Decimal("5000"), "w"), uow)
    assert err.value.reason == "INSUFFICIENT_FUNDS" and err.value.code == "FAILED_PRECONDITION"
    # Money in the message and the metadata reads as everywhere else in the API: two places.
    assert err.value.message == "available cash 5.00 is less than 5000.00"
    assert (err.value.metadata["available"], err.value.metadata["requested"]) == ("5.00", "5000.00")
    assert (await handlers.cash_balance(acct, uow)).total == Decimal("5.00")
    async with checked_pool.acquire() as conn:
        assert await conn.fetchval(
            "SELECT count(*) FROM ledger.entries WHERE account_id = $1 AND kind = 'WITHDRAWAL'", acct) == 0


async def test_the_database_itself_refuses_a_negative_available_balance(uow, checked_pool):
    acct = account()
    await handlers.deposit(commands.Deposit(acct, Decimal("5.00"), "d"), uow)
    async with checked_pool.acquire() as conn:
        book = await conn.fetchval("SELECT book_id FROM ledger.books WHERE owner = $1 AND asset = 'USD'", acct)
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE ledger.balances SET posted = posted - 6 WHERE book_id = $1", book)
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE ledger.balances SET held = 6 WHERE book_id = $1", book)


async def test_the_database_refuses_unbalanced_entries_and_edits_to_history(uow, checked_pool):
    acct = account()
    await handlers.deposit(commands.Deposit(acct, Decimal("1.00"), "d"), uow)
    async with checked_pool.acquire() as conn:
        ext = await conn.fetchval("SELECT book_id FROM ledger.books WHERE owner = '$external' AND asset = 'USD'")
        entry = uuid.uuid4()
        with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO ledger.entries (entry_id, kind, account_id, amount, asset) "
                    "VALUES ($1, 'DEPOSIT', $2, 1, 'USD')", entry, acct)
                await conn.execute("INSERT INTO ledger.postings (entry_id, book_id, asset, amount) "
                                   "VALUES ($1, $2, 'USD', 1), ($1, $2, 'USD', -0.99)", entry, ext)
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await conn.execute("UPDATE ledger.postings SET amount = amount * 2 WHERE book_id = "
                               "(SELECT book_id FROM ledger.books WHERE owner = $1)", acct)
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await conn.execute("DELETE FROM ledger.entries WHERE account_id = $1", acct)


async def test_two_databases_in_one_process_never_share_book_ids(pool, pg_server_url):
    """Book ids are cached per database: a system book (e.g. the counter-account of a symbol's
    shares) has a different id in each database, and a process that works on two (as the tests
    do: their own database and a mesh's) must post to the right one in each."""
    from tests.conftest import fresh_database

    async with fresh_database(pg_server_url) as other_url:
        other = await asyncpg.create_pool(other_url, min_size=1, max_size=2)
        try:
            # Shift the ids in the other database, so the same book gets different ids.
            for i in range(3):
                await handlers.deposit(commands.Deposit(f"filler-{i}", Decimal("1.00"), "k"),
                                       lambda: LedgerUnitOfWork(other))
            for p in (pool, other, pool, other):
                account = f"twodb-{uuid.uuid4().hex[:8]}"
                await handlers.credit_shares(commands.CreditShares(account, "SIRI", Decimal(5), "seed"),
                                             lambda p=p: LedgerUnitOfWork(p))
                balance = await handlers.book_balance(account, "SIRI", lambda p=p: LedgerUnitOfWork(p))
                assert balance.posted == 5
            ids = [await p.fetchval("SELECT book_id FROM ledger.books WHERE owner = '$external' AND asset = 'SIRI'")
                   for p in (pool, other)]
            assert ids[0] != ids[1]  # so a shared cache would have posted to a wrong or missing book
        finally:
            await other.close()


async def test_the_book_ids_a_process_keeps_are_bounded_and_a_book_let_go_is_read_again(uow, checked_pool,
                                                                                      monkeypatch):
    """Round 18 review: the cache of book ids grew by every book the process ever touched. At
    most BOOK_IDS_KEPT are kept; an account whose book was let go gets the same book again."""
    from ledger_svc.service_layer import unit_of_work

    monkeypatch.setattr(unit_of_work, "_BOOK_IDS", {})
    monkeypatch.setattr(unit_of_work, "BOOK_IDS_KEPT", 3)
    accounts = [account() for _ in range(6)]
    for i, acct in enumerate(accounts):  # created by the first (not kept: it might roll back), read by the second
        for n in range(2):
            await handlers.deposit(commands.Deposit(acct, Decimal("10.00"), f"d{i}-{n}"), uow)
    kept = unit_of_work._BOOK_IDS[checked_pool]
    assert len(kept) == 3 and accounts[0] not in {ref.owner for ref in kept}
    await handlers.deposit(commands.Deposit(accounts[0], Decimal("5.00"), "again"), uow)
    assert (await handlers.cash_balance(accounts[0], uow)).total == Decimal("25.00")
    books = await checked_pool.fetchval("SELECT count(*) FROM ledger.books WHERE owner = $1", accounts[0])
    assert books == 1


async def test_a_deposit_past_the_largest_balance_is_refused_with_its_reason(pg_server_url):
    """Round 24 explorer: a deposit onto a balance near the largest the ledger keeps (numeric(24,
    4)) answered INTERNAL, the column's overflow. It is FAILED_PRECONDITION BALANCE_LIMIT, and
    nothing is moved or kept under its key. (A database of its own: the balance is set by hand,
    as if 10^5 deposits of the most one may make had come before, which the invariants of the
    session's database would report.)"""
    from ledger_svc.domain.model import MAX_BALANCE, BalanceLimit
    from tests.conftest import fresh_database

    async with fresh_database(pg_server_url) as url:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
        try:
            uow = lambda: LedgerUnitOfWork(pool)  # noqa: E731
            a = f"rich-{uuid.uuid4().hex[:8]}"
            await handlers.deposit(commands.Deposit(a, Decimal("100"), "first"), uow)
            await pool.execute("UPDATE ledger.balances b SET posted = $1 FROM ledger.books k "
                               "WHERE k.book_id = b.book_id AND k.owner = $2 AND k.asset = 'USD'", MAX_BALANCE - 50, a)
            with pytest.raises(BalanceLimit) as refused:
                await handlers.deposit(commands.Deposit(a, Decimal("100"), "second"), uow)
            assert (refused.value.code, refused.value.reason) == ("FAILED_PRECONDITION", "BALANCE_LIMIT")
            assert refused.value.metadata["accountId"] == a
            assert (await handlers.cash_balance(a, uow)).total == MAX_BALANCE - 50  # nothing moved
            assert (await handlers.deposit(commands.Deposit(a, Decimal("10"), "second"), uow)).total == \
                MAX_BALANCE - 40  # its key kept nothing
        finally:
            await pool.close()
