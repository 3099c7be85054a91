"""A token bucket per Slack channel, in Redis, shared by every worker process.

Slack allows about one message a second per channel, with short bursts. The
bucket is one Lua script, so taking a token is atomic however many workers ask.
"""

from __future__ import annotations

import time

import redis

from incident import keys



# KEYS[1] bucket; ARGV: rate per second, burst, now (seconds, float), ttl,
# tokens to leave in the bucket (the reserve for pages; 0 for a page itself).
# Returns 0 when a token was taken, else the seconds until one is available.
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local need = 1 + tonumber(ARGV[5])
local wait = 0
if tokens >= need then
  tokens = tokens - 1
else
  wait = (need - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], ARGV[4])
return tostring(wait)
"""


class TokenBucket:
    def __init__(
        self, client: redis.Redis, *, rate: float = 1.0, burst: int = 3, reserve: int = 1
    ) -> None:
        self.rate = rate
        self.burst = burst
        # Ordinary messages leave this many tokens for pages, so a storm can
        # never take the token a SEV1/SEV2 needs.
        self.reserve = reserve
        self._take = client.register_script(_TAKE)

    def take(self, name: str, *, priority: bool = False) -> float:
        """Take a token now (returns 0.0), or say how many seconds until one is free."""
        # Redis's clock would be better shared, but TIME is not allowed before
        # writes in scripts on older servers; workers' clocks agree closely enough.
        leave = 0 if priority else self.reserve
        wait = self._take(
            keys=[keys.SLACK_BUCKET + name], args=[self.rate, self.burst, time.time(), 3600, leave]
        )
        return float(wait)
