"""own_database_fixtures (tests/integration/conftest.py): a module that calls it has its own
database in every fixture that reaches one, and the ledger's invariants (checked_pool) are
checked on that database after each test, not on the session's."""
from __future__ import annotations

import pytest

from tests.integration.conftest import own_database_fixtures

pytestmark = pytest.mark.integration

pool, database_url, namespace, ledger_addr = own_database_fixtures()


async def test_the_module_s_fixtures_and_its_invariant_check_are_on_its_own_database(
        checked_pool, own_pool, database_url, own_database_url, namespace, own_namespace, ledger_addr,
        own_ledger_addr):
    assert checked_pool is own_pool
    assert database_url == own_database_url
    assert namespace == own_namespace
    assert ledger_addr == own_ledger_addr  # the ledger served on own_pool
    async with checked_pool.acquire() as conn:
        assert await conn.fetchval("SELECT current_database()") == own_database_url.rpartition("/")[2]
