"""A unit of work: one PostgreSQL transaction that commits only when asked to."""
from __future__ import annotations

import time
from typing import Any

import asyncpg
from prometheus_client import Histogram

from meshkit import db

# How long a unit of work waited for a connection of its service's pool: readiness no longer
# says that every connection is busy (db.PostgresProbe asks on its own), this does.
POOL_WAIT = Histogram("stockmesh_db_pool_wait_seconds", "From a unit of work asking its pool for a connection to "
                      "getting one", buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30))


class UnitOfWork:
    """`async with uow:` opens a transaction; `await uow.commit()` commits it; leaving the
    block without committing (or with an exception) rolls it back. Subclasses attach their
    repositories in `_open(conn)`."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.conn: asyncpg.Connection | None = None
        self._tx: Any = None
        self._single = False

    def single_statement(self) -> "UnitOfWork":
        """For a unit of work that is exactly one SQL statement (e.g. one call of a database
        function that makes the whole change): the statement is its own transaction, atomic
        like any other, without the BEGIN and COMMIT round trips. `commit()` is then a no-op."""
        self._single = True
        return self

    def reads(self) -> "UnitOfWork":
        """For a unit of work that only reads, each statement seeing what was committed when it
        started: exactly what a READ COMMITTED transaction gives, so it runs without one (no
        BEGIN and ROLLBACK round trips). Reads that must share one snapshot belong in one
        statement."""
        return self.single_statement()

    def _open(self, conn: asyncpg.Connection) -> None:  # pragma: no cover - overridden
        pass

    async def __aenter__(self) -> "UnitOfWork":
        asked = time.perf_counter()
        conn = await self.pool.acquire()
        POOL_WAIT.observe(time.perf_counter() - asked)
        if self._single:
            self.conn = conn
            self._open(conn)
            return self
        try:
            tx = conn.transaction()
            await tx.start()
        except BaseException:
            # Cancelled (a client deadline, a reset stream) or failed while BEGIN was in
            # flight: __aexit__ will not run, so hand the connection back here; the pool rolls
            # back whatever was begun.
            await self.pool.release(conn)
            raise
        self.conn, self._tx = conn, tx
        self._open(conn)
        return self

    async def commit(self) -> None:
        if self._single:
            return
        await self._tx.commit()
        self._tx = None

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self._tx is not None:
                try:
                    await self._tx.rollback()
                except (asyncpg.InterfaceError, asyncpg.PostgresError, OSError):
                    if exc[0] is None:
                        raise
                    # The block already failed, typically cancelled (a client's deadline) while
                    # its COMMIT or a statement was in flight: the transaction's state is unknown
                    # and asyncpg will not roll it back. Close the connection (the server ends
                    # the transaction with it) and let the block's own exception go on, not this one.
                    db.terminate(self.conn)
        finally:
            self._tx = None
            await self.pool.release(self.conn)
            self.conn = None
