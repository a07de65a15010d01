"""The operator's commands given a database that answers but holds no StockMesh data (a
mistyped --database-url, a restore target still empty): one line saying so, never a
traceback (round 25 explorer: 67 lines ending in `relation "orders.outbox" does not exist`)."""
from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from click.testing import CliRunner

from meshkit import bus
from meshkit.cli import main, not_migrated
from meshkit.migrate import scratch_database

pytestmark = pytest.mark.integration


@pytest.fixture
async def empty_database(pg_server_url):
    async with scratch_database(pg_server_url, "stockmesh_test_empty", migrated=False) as url:
        yield url


@pytest.mark.parametrize("args", [
    ["settle", "--date", "2026-12-04", "--namespace", "empty"],
    ["session", "close", "--date", "2026-12-04", "--namespace", "empty"],
    ["audit", "verify"],
    ["journal", "trim", "--before", "2026-12-04"],
], ids=lambda a: " ".join(a[:2]))
async def test_a_database_without_stockmesh_data_is_one_line(empty_database, nats_url, nats_conn, args):
    stream = None
    if args[0] == "journal":  # a journal on the NATS given: trim reads the database next
        ns = f"empty{uuid.uuid4().hex[:8]}"
        stream = await bus.ensure_stream(nats_conn.jetstream(), ns, "EXECUTIONS")
        args = [*args, "--nats-url", nats_url, "--namespace", ns]
    try:
        done = await asyncio.to_thread(CliRunner().invoke, main, [*args, "--database-url", empty_database])
    finally:
        if stream:
            await nats_conn.jetstream().delete_stream(stream)
    assert done.exit_code == 1, done.output
    assert "Traceback" not in done.output and len(done.output.strip().splitlines()) <= 3, done.output
    assert "the database holds no StockMesh data" in done.output, done.output


async def test_a_missing_table_of_a_migrated_database_is_a_bug_that_keeps_its_traceback(empty_database,
                                                                                          pg_server_url):
    """Review of round 25: a mistyped table, or a function called with wrong arguments, in a
    database every migration was applied to is a bug, not a database to migrate."""
    from tests.conftest import fresh_database

    missing = asyncpg.UndefinedTableError('relation "orders.outbox" does not exist')
    said = await asyncio.to_thread(not_migrated, missing, empty_database)
    assert said is not None and said.startswith('PostgreSQL: relation "orders.outbox" does not exist: '), said
    assert await asyncio.to_thread(not_migrated, asyncpg.UndefinedTableError(
        'relation "public.widgets" does not exist'), empty_database) is None
    assert await asyncio.to_thread(not_migrated, ValueError('relation "orders.outbox" does not exist'),
                                   empty_database) is None
    async with fresh_database(pg_server_url) as migrated:
        assert await asyncio.to_thread(not_migrated, missing, migrated) is None
        bug = asyncpg.UndefinedTableError('relation "ledger.bookz" does not exist')
        assert await asyncio.to_thread(not_migrated, bug, migrated) is None
