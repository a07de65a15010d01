"""Shared fixtures. Every run makes its own database (and, for the mesh, its own NATS
namespace and data folder), so runs never see each other's data or a developer's mesh."""
from __future__ import annotations

import asyncio
import os
from contextlib import asynccontextmanager

import asyncpg
import pytest

from meshkit import audit
from meshkit.migrate import database_url_on, drop_database, migrated_template, scratch_database
from tests.support import invariants

DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


_with_db = database_url_on


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """A PostgreSQL server URL (its maintenance database): $TEST_DATABASE_SERVER_URL, else the
    local default; where none answers, the launcher starts one in a scratch folder."""
    from tests.support.servers import postgres_server

    return postgres_server(os.environ.get("TEST_DATABASE_SERVER_URL", DEFAULT_SERVER_URL))


# The run's migrated database on each server, that fresh_database copies (a copy takes ~0.2 s,
# the migrations ~1 s: some sixty databases a run); dropped at the end of the run.
_templates: dict[str, str] = {}


@asynccontextmanager
async def fresh_database(server_url: str):
    """A new database with every service's schema on the server at `server_url`: its URL;
    dropped afterwards."""
    if server_url not in _templates:  # migrated in a thread: the event loop's servers go on (review)
        made = await asyncio.to_thread(migrated_template, server_url, "stockmesh_test_template")
        if _templates.setdefault(server_url, made) != made:  # another test's came first
            await asyncio.to_thread(drop_database, server_url, made)
    async with scratch_database(server_url, "stockmesh_test", template=_templates[server_url]) as url:
        yield url


@pytest.fixture(scope="session", autouse=True)
def _drop_templates():
    yield
    while _templates:
        drop_database(*_templates.popitem())


@pytest.fixture(scope="session")
async def database_url(pg_server_url: str):
    async with fresh_database(pg_server_url) as url:
        yield url


@pytest.fixture(scope="session")
async def pool(database_url: str):
    p = await asyncpg.create_pool(database_url, min_size=2, max_size=20)
    yield p
    # After everything the suite did to this database, the audit trail must still verify.
    async with p.acquire() as conn:
        checked, broken = await audit.verify(conn)
    await p.close()
    assert not broken, f"audit trail broken after the suite ({checked} events intact): {broken}"


@pytest.fixture(scope="module")
async def own_database_url(pg_server_url: str):
    """The URL of the module's own database (own_pool's), for what connects by URL (order_svc's
    outbox relay, a command): a module using own_pool makes it its `database_url`."""
    async with fresh_database(pg_server_url) as url:
        yield url


@pytest.fixture(scope="module")
async def own_pool(own_database_url: str):
    """A database of the test module's own, for tests whose data another module's must not see
    (fills left unsettled, which a settlement of the day elsewhere would take). A module makes
    it its `pool` (so that `checked_pool` checks it), and own_database_url, own_namespace and
    own_ledger_addr its `database_url`, `namespace` and `ledger_addr`, so that its orders,
    holds and their messages all stay with its database, with one line:
    `pool, database_url, namespace, ledger_addr = own_database_fixtures()`
    (tests/integration/conftest.py, which says how)."""
    p = await asyncpg.create_pool(own_database_url, min_size=1, max_size=20)  # the session's size: the same races
    yield p
    async with p.acquire() as conn:  # as the session's pool: the module's audit trail verifies
        checked, broken = await audit.verify(conn)
    await p.close()
    assert not broken, f"audit trail broken after the module ({checked} events intact): {broken}"


@pytest.fixture
async def checked_pool(pool):
    """The pool, with the ledger's invariants checked after the test."""
    yield pool
    problems = await invariants.check(pool)
    assert not problems, "ledger invariants broken:\n" + "\n".join(problems)
