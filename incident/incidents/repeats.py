"""The repeat cache: each group's last applied webhook digest in Redis, the no-database fast path.

Alertmanager re-sends every group over and over; an unchanged re-send is
recognised here without touching PostgreSQL. The cache is advisory. A miss,
or Redis being unreachable, only sends the webhook down the slow path, where
the digest stored on the group row under its lock has the final word.
"""

from __future__ import annotations

import time

import redis
import structlog

from incident import keys

log = structlog.get_logger(__name__)

_TTL_SECONDS = 7 * 24 * 3600

# Newer revisions win: a worker that commits first but writes the cache last
# must not put an older digest back.
_REMEMBER = """
local current = redis.call('GET', KEYS[1])
if current then
  local rev = tonumber(string.match(current, '^(%d+):'))
  if rev and rev >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[2], 'EX', ARGV[3])
return 1
"""


def repeat_key(group_hash: str) -> str:
    return keys.REPEAT_CACHE + group_hash


class RepeatCache:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._remember = client.register_script(_REMEMBER)

    @property
    def client(self) -> redis.Redis:
        return self._redis

    def is_current(self, group_hash: str, digest: str) -> bool:
        """True when this exact webhook was already applied; records that the group was seen."""
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.get(repeat_key(group_hash))
            pipe.hset(keys.GROUP_LAST_SEEN, group_hash, int(time.time()))
            cached, _ = pipe.execute()
        except redis.RedisError as exc:
            log.warning("repeat cache unavailable", error=str(exc))
            return False
        return cached is not None and cached.split(b":", 1)[1].decode() == digest

    def remember(self, group_hash: str, revision: int, digest: str) -> None:
        try:
            self._remember(keys=[repeat_key(group_hash)], args=[revision, digest, _TTL_SECONDS])
        except redis.RedisError as exc:
            log.warning("repeat cache unavailable", error=str(exc))
