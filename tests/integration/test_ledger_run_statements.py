"""What a run of executions costs the database (settlement.apply_executions): its statements,
counted on the connection, not guessed. A run's statements are a fixed few however many
accounts and books it touches, even with no book id known to the process yet (a cold cache:
a restart, or accounts that trade for the first time). Round 21 review: one statement per
book id not known yet (test_ledger_runs' flow, cold: 8 of its 24 statements; twelve fills of
accounts of their own: 37 of 53)."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from ledger_svc.service_layer import commands, handlers as ledger, settlement
from ledger_svc.service_layer import unit_of_work
from ledger_svc.service_layer.unit_of_work import LedgerUnitOfWork
from meshkit import calendar
from meshkit.executions import FILL, Execution
from tests.integration.conftest import own_database_fixtures

pytestmark = pytest.mark.integration
D = Decimal
# Not the run's own: its COMMIT, and asyncpg's introspection of a type the first time a
# connection meets it.
FRAME = {"COMMIT;"}
INTROSPECTION = ("current_setting('jit')", "typeinfo_tree", "set_config('jit'")

# A database of this module's own: its fills stay unsettled (see test_ledger_runs.py).
pool, database_url, namespace, ledger_addr = own_database_fixtures()


class Counted(LedgerUnitOfWork):
    """A unit of work whose statements are recorded, each unit's in a list of its own (its
    COMMIT too; not its BEGIN, sent before, nor a rollback or the pool's reset, after)."""

    def __init__(self, pool, units: list[list[str]]) -> None:
        super().__init__(pool)
        self.units = units

    def _open(self, conn) -> None:
        super()._open(conn)
        statements: list[str] = []
        self.units.append(statements)
        self._log = lambda q: None if any(i in q.query for i in INTROSPECTION) else statements.append(q.query.strip())
        conn.add_query_logger(self._log)

    async def __aexit__(self, *exc: object) -> None:
        self.conn.remove_query_logger(self._log)
        await super().__aexit__(*exc)


async def counted_run(pool, pairs: int) -> list[list[str]]:
    """`pairs` buyers and sellers of accounts of their own, each pair one fill of one share
    that ends both orders, applied as one batch with no book id known to the process: the
    statements of each unit of work the batch used."""
    tag = uuid.uuid4().hex[:8]
    uow = lambda: LedgerUnitOfWork(pool)  # noqa: E731
    now = datetime.now(timezone.utc)
    fills = []
    for i in range(pairs):
        buyer, seller = f"b{i}-{tag}", f"s{i}-{tag}"
        await ledger.deposit(commands.Deposit(buyer, D("500"), "fund"), uow)
        await ledger.credit_shares(commands.CreditShares(seller, "AAPL", D(3), "seed", D("90")), uow)
        await ledger.place_hold(commands.PlaceHold(f"bo{i}-{tag}", buyer, f"bo{i}-{tag}", "USD", D("200")), uow)
        await ledger.place_hold(commands.PlaceHold(f"so{i}-{tag}", seller, f"so{i}-{tag}", "AAPL", D(1)), uow)
        fills.append(Execution(
            execution_id=f"x{i}-{tag}", symbol="AAPL", type=FILL, order_id=f"bo{i}-{tag}", account_id=buyer,
            side="BUY", counter_order_id=f"so{i}-{tag}", counter_account_id=seller, price=D("101.25"), quantity=1,
            leaves=0, counter_leaves=0, executed_at=now, trade_date=calendar.trading_day(now)))
    unit_of_work._BOOK_IDS.pop(pool, None)  # cold: as after a restart
    units: list[list[str]] = []
    assert await settlement.apply_executions(fills, lambda: Counted(pool, units)) == pairs
    return units


def statements(units: list[list[str]]) -> int:
    return sum(1 for unit in units for q in unit if q not in FRAME)


async def test_a_cold_run_s_statements_do_not_grow_with_its_accounts(checked_pool):
    """Two pairs of accounts or twelve, each buyer's shares book made by the run: the same
    statements (before, a statement per book whose id the process did not know)."""
    few, many = await counted_run(checked_pool, 2), await counted_run(checked_pool, 12)
    assert statements(many) == statements(few), (few, many)


async def test_books_made_by_a_concurrent_transaction_are_found_once_it_commits(checked_pool):
    """book_ids makes a run's missing books in one statement: a book another transaction is
    making meanwhile waits for it and, made by neither that statement nor seen by it, is read
    again once that transaction has committed (its id, not a second book)."""
    import asyncio

    from ledger_svc.domain.model import BookRef
    from tests.support.wait import eventually

    tag = uuid.uuid4().hex[:8]
    racing, other = BookRef(f"r-{tag}", "AAPL"), BookRef(f"o-{tag}", "AAPL")
    pids: list[int] = []

    async def resolve() -> dict[BookRef, int]:
        async with LedgerUnitOfWork(checked_pool) as uow:
            pids.append(await uow.ledger.conn.fetchval("SELECT pg_backend_pid()"))
            found = await uow.ledger.book_ids([racing, other])
            await uow.commit()
            return found

    maker = await checked_pool.acquire()
    try:
        async with maker.transaction():  # another transaction making one of the books, committed at the end
            made = await maker.fetchval("INSERT INTO ledger.books (owner, asset, is_customer) VALUES ($1, $2, true) "
                                        "RETURNING book_id", racing.owner, racing.asset)
            await maker.execute("INSERT INTO ledger.balances (book_id) VALUES ($1)", made)
            resolving = asyncio.create_task(resolve())
            assert await eventually(lambda: pids and _waits_for_a_lock(checked_pool, pids[0]))
        ids = await resolving
    finally:
        await checked_pool.release(maker)
    assert ids[racing] == made
    assert await checked_pool.fetchval("SELECT count(*) FROM ledger.books WHERE owner = ANY($1)",
                                       [racing.owner, other.owner]) == 2
    assert await checked_pool.fetchval("SELECT count(*) FROM ledger.balances WHERE book_id = ANY($1)",
                                       list(ids.values())) == 2


async def _waits_for_a_lock(pool, pid: int) -> bool:
    return bool(await pool.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid))


async def test_a_batch_is_its_runs_transactions_alone(checked_pool):
    """A batch of one run is one transaction, and its lock wait and its look at the parked
    executions cost no statement of their own (round 21 review: a read of the parked accounts
    before the run, in a round trip of its own, and a set_config in the run's transaction).
    test_ledger_runs' parking tests show both still hold."""
    units = await counted_run(checked_pool, 2)
    assert len(units) == 1, units
    assert not [q for q in units[0] if q.startswith("SELECT set_config")], units
