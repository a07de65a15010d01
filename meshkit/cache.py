"""Redis for rate limits and quote_svc's copy of the latest quotes. Redis never holds money state."""
from __future__ import annotations

import redis.asyncio as aioredis


def connect(url: str, *, max_connections: int = 50) -> aioredis.Redis:
    # A blocking pool: under load a caller waits briefly for a connection instead of failing.
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=0.5, socket_timeout=1, socket_connect_timeout=1,
        health_check_interval=10)
    return aioredis.Redis(connection_pool=pool)
