"""meshkit.uow.UnitOfWork when the database goes away under a failing block: the block's own
exception reaches the caller (a cancel of a FILLED order stays FAILED_PRECONDITION), not the
cleanup's "connection has been released back to the pool" (an INTERNAL seen in the chaos test)."""
from __future__ import annotations

import asyncio

import asyncpg
import pytest

from meshkit.uow import UnitOfWork
from tests.support.wait import eventually


class Refused(Exception):
    pass


def gone(conn) -> bool:
    """asyncpg saw the connection close (and its pool took it back: the proxy then refuses calls)."""
    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:
        return True


async def test_a_block_that_fails_on_a_lost_connection_raises_its_own_error(database_url):
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        with pytest.raises(Refused):
            async with UnitOfWork(pool) as uow:
                pid = await uow.conn.fetchval("SELECT pg_backend_pid()")
                async with pool.acquire() as other:  # the server ends the session: as a restart does
                    await other.execute("SELECT pg_terminate_backend($1)", pid)
                assert await eventually(lambda: asyncio.sleep(0, gone(uow.conn)), timeout=10)
                raise Refused("the order is already FILLED")
        async with UnitOfWork(pool) as uow:  # and the pool goes on with a new connection
            assert await uow.conn.fetchval("SELECT 1") == 1
    finally:
        await pool.close()
