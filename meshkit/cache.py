"""Redis for hot reads and rate limits. Redis never holds money state."""
from __future__ import annotations

import redis.asyncio as aioredis


def connect(url: str) -> aioredis.Redis:
    return aioredis.from_url(url, socket_timeout=1, socket_connect_timeout=1, health_check_interval=10)


def redis_check(r: aioredis.Redis):
    async def redis() -> None:
        await r.ping()
    return redis
