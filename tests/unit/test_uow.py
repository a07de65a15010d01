"""UnitOfWork: a block cut short while its COMMIT was in flight (a client's deadline cancels the
call) ends with the block's own exception, not asyncpg's 'cannot rollback' (which the services
logged as a crash), and the connection, in an unknown state, is closed, not reused."""
from __future__ import annotations

import asyncio

import asyncpg
import pytest

from meshkit.uow import UnitOfWork


class Tx:
    async def start(self) -> None:
        pass

    async def commit(self) -> None:
        raise asyncio.CancelledError  # the call was cancelled while COMMIT was in flight

    async def rollback(self) -> None:
        raise asyncpg.InterfaceError("cannot rollback; the transaction is in error state")


class Conn:
    terminated = False

    def transaction(self) -> Tx:
        return Tx()

    def terminate(self) -> None:
        self.terminated = True


class Pool:
    def __init__(self) -> None:
        self.conn, self.released = Conn(), []

    async def acquire(self) -> Conn:
        return self.conn

    async def release(self, conn: Conn) -> None:
        self.released.append(conn)


async def test_a_commit_cut_short_ends_with_its_own_exception_and_a_closed_connection():
    pool = Pool()
    with pytest.raises(asyncio.CancelledError):
        async with UnitOfWork(pool) as uow:  # type: ignore[arg-type]
            await uow.commit()
    assert pool.conn.terminated and pool.released == [pool.conn]


async def test_a_rollback_that_fails_on_its_own_is_still_an_error():
    pool = Pool()
    with pytest.raises(asyncpg.InterfaceError):
        async with UnitOfWork(pool):  # type: ignore[arg-type]
            pass  # left without committing: rolled back, and that fails
    assert not pool.conn.terminated and pool.released == [pool.conn]
