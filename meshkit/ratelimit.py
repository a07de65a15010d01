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

from meshkit.batching import Batcher
from meshkit.errors import ResourceExhausted

log = logging.getLogger("meshkit.ratelimit")

# The checks of many concurrent callers in one call. KEYS: the buckets of every check, in order;
# ARGV: the number of checks, then per check its number of buckets n and (rate, burst) for
# each. The checks are applied one after the other; each takes a token from every one of its
# buckets or from none. Returns per check {allowed, retry_ms, index of its first empty bucket}.
# The time is Redis's own, one clock for every replica (round 17: each replica's wall clock
# refilled a bucket by its skew, so a replica running ahead gave out more than the limit).
_BUCKETS = """
redis.replicate_commands()  -- TIME before writes: effects replication (the default from Redis 5; 3.2 and 4 need it)
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {}
local a, k = 2, 1
for r = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[a])
  local state, refused = {}, nil
  for i = 1, n do
    local rate, burst = tonumber(ARGV[a + 2 * i - 1]), tonumber(ARGV[a + 2 * i])
    local b = redis.call('HMGET', KEYS[k + i - 1], 't', 'ts')
    local tokens = tonumber(b[1]) or burst
    local ts = tonumber(b[2]) or now
    tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
    if tokens < 1 then
      refused = {0, math.ceil((1 - tokens) / rate * 1000), i}
      break
    end
    state[i] = {KEYS[k + i - 1], tokens - 1, rate, burst}
  end
  if refused then
    out[r] = refused
  else
    for _, s in ipairs(state) do
      redis.call('HSET', s[1], 't', s[2], 'ts', now)
      redis.call('PEXPIRE', s[1], math.ceil(s[4] / s[3] * 1000) + 1000)
    end
    out[r] = {1, 0, 0}
  end
  a, k = a + 1 + 2 * n, k + n
end
return out
"""

Buckets = list[tuple[str, "Limit", str]]  # (key, limit, what it limits)


@dataclass(frozen=True)
class Limit:
    rate: float  # tokens per second
    burst: int


class RateLimiter:
    """Checks of concurrent callers share one script call (meshkit.batching): one round trip
    and one script run for many orders."""

    def __init__(self, redis: aioredis.Redis | None, namespace: str, *, pause_after_failure: float = 5.0) -> None:
        self.redis = redis
        self.prefix = f"{namespace}:rl:"
        self.pause = pause_after_failure
        self._skip_until = 0.0
        self._script = redis.register_script(_BUCKETS) if redis is not None else None
        self._batcher: Batcher[Buckets, list | None] = Batcher(self._check_all, in_flight=2, name="rate_limits")

    @property
    def script_calls(self) -> int:
        """Round trips to Redis so far (for tests and benchmarks)."""
        return self._batcher.batches

    async def check(self, buckets: Buckets) -> None:
        """Take one token from each (key, limit, what) bucket, all or none;
        RESOURCE_EXHAUSTED with a retry delay naming the first bucket that is empty."""
        if self._script is None or time.monotonic() < self._skip_until:
            return
        answer = await self._batcher.submit(buckets)
        if answer is None:  # Redis did not answer: fail open
            return
        allowed, retry_ms, index = answer
        if not allowed:
            what = buckets[index - 1][2]
            raise ResourceExhausted(f"too many requests for {what}; retry in {retry_ms} ms",
                                    retry_after_seconds=retry_ms / 1000, metadata={"limit": what})

    async def _check_all(self, checks: list[Buckets]) -> list[list | None]:
        assert self._script is not None
        keys: list[str] = []
        args: list[float] = [len(checks)]
        for buckets in checks:
            args.append(len(buckets))
            for key, limit, _ in buckets:
                keys.append(self.prefix + key)
                args += [limit.rate, limit.burst]
        try:
            return await self._script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            self._skip_until = time.monotonic() + self.pause
            log.warning("rate limits fail open: redis does not answer", extra={"error": repr(exc)})
            return [None] * len(checks)
