"""meshkit.db.advisory_lock when the database goes away under the block: the block's own error
reaches the caller, not the unlock's on the same dead connection (acceptance round 14 A:
`stockmesh settle` with PostgreSQL killed mid-run ended in a traceback about a connection
"released back to the pool" instead of the one-line "database unavailable")."""
from __future__ import annotations

import asyncpg
import pytest

from meshkit import db


class DeadAfterLock:
    """A pooled connection that takes the lock, then is lost: every later call fails as
    asyncpg's proxy of a connection already back in the pool does."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.terminated = False

    async def execute(self, sql: str, *args):
        self.calls.append(sql)
        if "unlock" in sql:
            raise asyncpg.InterfaceError("cannot call Connection.execute(): connection has been released back "
                                         "to the pool")

    def terminate(self) -> None:
        self.terminated = True


class Pool:
    def __init__(self, conn) -> None:
        self.conn, self.released = conn, 0

    async def acquire(self):
        return self.conn

    async def release(self, conn) -> None:
        self.released += 1


async def test_the_blocks_error_is_not_hidden_by_the_unlocks():
    conn = DeadAfterLock()
    pool = Pool(conn)
    with pytest.raises(asyncpg.ConnectionDoesNotExistError, match="connection was closed"):
        async with db.advisory_lock(pool, "journal"):
            raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
    assert conn.terminated and pool.released == 1 and conn.calls[-1].startswith("SELECT pg_advisory_unlock")


async def test_an_unlock_that_fails_after_a_block_that_worked_is_raised():
    conn = DeadAfterLock()
    with pytest.raises(asyncpg.InterfaceError):
        async with db.advisory_lock(Pool(conn), "journal"):
            pass
    assert conn.terminated
