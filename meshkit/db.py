"""PostgreSQL connection pools (asyncpg). NUMERIC columns come back as exact Decimals."""
from __future__ import annotations

import asyncpg


async def _rollback_only(conn: asyncpg.Connection) -> None:
    """Our services keep no session state on pooled connections (no SET, no LISTEN, no
    advisory locks: those use dedicated connections), so releasing one needs no reset query;
    the pool still rolls back an open transaction before calling this. One round trip less
    per transaction."""


async def create_pool(url: str, *, min_size: int = 2, max_size: int = 20) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        url, min_size=min_size, max_size=max_size, command_timeout=30, reset=_rollback_only,
        server_settings={
            "application_name": "stockmesh",
            # Backstop: a connection left idle inside a transaction is closed by the server.
            "idle_in_transaction_session_timeout": "60000",
        })


def pool_check(pool: asyncpg.Pool):
    async def postgres() -> None:
        await pool.fetchval("SELECT 1")
    return postgres
