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


def _pool_waits() -> tuple[float, float]:
    from meshkit.uow import POOL_WAIT

    samples = {s.name: s.value for m in POOL_WAIT.collect() for s in m.samples}
    return samples["stockmesh_db_pool_wait_seconds_count"], samples["stockmesh_db_pool_wait_seconds_sum"]


async def test_a_unit_of_work_says_how_long_it_waited_for_its_pool(database_url):
    """Round 22: readiness no longer goes NOT_SERVING when every connection of a pool is busy
    (it asks PostgreSQL on a connection of its own), so stockmesh_db_pool_wait_seconds says it:
    each unit of work observes its wait for a connection, here one it waits for until the
    pool's only connection is given back."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        count, total = _pool_waits()
        async with UnitOfWork(pool).reads() as uow:  # a connection at once
            assert await uow.conn.fetchval("SELECT 1") == 1
        assert _pool_waits()[0] == count + 1
        held = await pool.acquire()
        asking = asyncio.Event()

        async def wait_for_it() -> int:
            asking.set()  # (no await between this and the pool's acquire: it asks now)
            async with UnitOfWork(pool) as uow:
                return await uow.conn.fetchval("SELECT 2")

        task = asyncio.create_task(wait_for_it())
        await asking.wait()
        assert not task.done()
        _, before = _pool_waits()
        await pool.release(held)
        assert await task == 2
        after_count, after = _pool_waits()
        assert after_count == count + 2 and after > before  # the wait for `held`, observed
    finally:
        await pool.close()
