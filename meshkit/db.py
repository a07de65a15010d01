"""PostgreSQL connection pools (asyncpg). NUMERIC columns come back as exact Decimals."""
from __future__ import annotations

import asyncpg


async def create_pool(url: str, *, min_size: int = 2, max_size: int = 20) -> asyncpg.Pool:
    # statement_cache on: repositories use a fixed set of statements.
    return await asyncpg.create_pool(url, min_size=min_size, max_size=max_size,
                                     command_timeout=30, server_settings={"application_name": "stockmesh"})


def pool_check(pool: asyncpg.Pool):
    async def postgres() -> None:
        await pool.fetchval("SELECT 1")
    return postgres
