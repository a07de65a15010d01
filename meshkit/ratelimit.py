"""Token-bucket rate limits in Redis, one bucket per key (per account, per symbol).

Redis holds no money state: when it does not answer, limits fail open (logged) and are
skipped for a few seconds, so an order never waits on a dead cache.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from meshkit.errors import ResourceExhausted

log = logging.getLogger("meshkit.ratelimit")

# KEYS[1] bucket; ARGV: rate (tokens/s), burst, now (s), cost. Returns {allowed, retry_ms}.
_BUCKET = """
local b = redis.call('HMGET', KEYS[1], 't', 'ts')
local rate, burst, now, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed, retry = 0, 0
if tokens >= cost then tokens = tokens - cost; allowed = 1 else retry = math.ceil((cost - tokens) / rate * 1000) end
redis.call('HSET', KEYS[1], 't', tokens, 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, retry}
"""


@dataclass(frozen=True)
class Limit:
    rate: float  # tokens per second
    burst: int


class RateLimiter:
    def __init__(self, redis: aioredis.Redis | None, namespace: str, *, pause_after_failure: float = 5.0) -> None:
        self.redis = redis
        self.prefix = f"{namespace}:rl:"
        self.pause = pause_after_failure
        self._skip_until = 0.0
        self._script = redis.register_script(_BUCKET) if redis is not None else None

    async def check(self, key: str, limit: Limit, what: str) -> None:
        """Take one token from `key`'s bucket or raise RESOURCE_EXHAUSTED with a retry delay."""
        if self._script is None or time.monotonic() < self._skip_until:
            return
        try:
            allowed, retry_ms = await self._script(keys=[self.prefix + key],
                                                   args=[limit.rate, limit.burst, time.time(), 1])
        except (RedisError, OSError) as exc:
            self._skip_until = time.monotonic() + self.pause
            log.warning("rate limits fail open: redis does not answer", extra={"error": repr(exc)})
            return
        if not allowed:
            raise ResourceExhausted(f"too many requests for {what}; retry in {retry_ms} ms",
                                    retry_after_seconds=retry_ms / 1000, metadata={"limit": what})
