"""PostgreSQL connection pools (asyncpg). NUMERIC columns come back as exact Decimals."""
from __future__ import annotations

import os

import asyncpg


async def _rollback_only(conn: asyncpg.Connection) -> None:
    """Our services keep no session state on pooled connections (no SET, no LISTEN, no
    advisory locks: those use dedicated connections), so releasing one needs no reset query;
    the pool still rolls back an open transaction before calling this. One round trip less
    per transaction."""


def pool_max(default: int) -> int:
    """A service's pool size: DB_POOL_MAX when set (PostgreSQL's max_connections is shared by
    every replica of every service), else the service's default."""
    raw = os.environ.get("DB_POOL_MAX", "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else default


async def create_pool(url: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        url, min_size=min_size, max_size=max_size, command_timeout=30, reset=_rollback_only,
        max_inactive_connection_lifetime=60,
        server_settings={
            "application_name": "stockmesh",
            # Backstop: a connection left idle inside a transaction is closed by the server.
            "idle_in_transaction_session_timeout": "60000",
        })


# The connection to PostgreSQL failed under the statement (the server restarting, shut down
# or gone, the connection cut), as opposed to the statement's or the program's own error.
_CONNECTION_LOST = (asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError,
                    asyncpg.CrashShutdownError, ConnectionError)


def connection_lost(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) is PostgreSQL's connection failing rather than an error
    of the statement or the program: the caller may try again once the server is back. Also
    asyncpg's InterfaceError on a connection that was closed meanwhile, and its
    InternalClientError about the protocol's state, which a connection the server terminated
    mid-operation raises on its next use (MagicStack/asyncpg#784, sqlalchemy#13241)."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, _CONNECTION_LOST):
            return True
        if isinstance(exc, asyncpg.InterfaceError) and "connection is closed" in str(exc):
            return True
        if isinstance(exc, asyncpg.InternalClientError) and "state" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def pool_check(pool: asyncpg.Pool):
    async def postgres() -> None:
        await pool.fetchval("SELECT 1")
    return postgres
