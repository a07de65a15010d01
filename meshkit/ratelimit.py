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

# KEYS: one bucket each; ARGV: now, then (rate, burst) per key. A token is taken from every
# bucket or from none. Returns {allowed, retry_ms, index of the first empty bucket}.
_BUCKETS = """
local now = tonumber(ARGV[1])
local state = {}
for i, key in ipairs(KEYS) do
  local rate, burst = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local b = redis.call('HMGET', key, 't', 'ts')
  local tokens = tonumber(b[1]) or burst
  local ts = tonumber(b[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
  if tokens < 1 then
    return {0, math.ceil((1 - tokens) / rate * 1000), i}
  end
  state[i] = {key, tokens - 1, rate, burst}
end
for _, s in ipairs(state) do
  redis.call('HSET', s[1], 't', s[2], 'ts', now)
  redis.call('PEXPIRE', s[1], math.ceil(s[4] / s[3] * 1000) + 1000)
end
return {1, 0, 0}
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
        self._script = redis.register_script(_BUCKETS) if redis is not None else None

    async def check(self, buckets: list[tuple[str, Limit, str]]) -> None:
        """Take one token from each (key, limit, what) bucket, all or none, in one round trip;
        RESOURCE_EXHAUSTED with a retry delay naming the first bucket that is empty."""
        if self._script is None or time.monotonic() < self._skip_until:
            return
        args: list[float] = [time.time()]
        for _, limit, _ in buckets:
            args += [limit.rate, limit.burst]
        try:
            allowed, retry_ms, index = await self._script(keys=[self.prefix + k for k, _, _ in buckets], args=args)
        except (RedisError, OSError) as exc:
            self._skip_until = time.monotonic() + self.pause
            log.warning("rate limits fail open: redis does not answer", extra={"error": repr(exc)})
            return
        if not allowed:
            what = buckets[index - 1][2]
            raise ResourceExhausted(f"too many requests for {what}; retry in {retry_ms} ms",
                                    retry_after_seconds=retry_ms / 1000, metadata={"limit": what})
