"""A circuit breaker per remediation and target, shared by every worker through Redis.

Written here rather than taken from pybreaker or purgatory: pybreaker's Redis
storage reads and writes state in separate round trips and guards them with
an in-process lock (danielfm/pybreaker#44), and neither library lets only one
caller through in half-open across processes. Here each question is one Lua
script, so a transition is atomic, and half-open hands out a single trial
token with a lease: however many workers ask at once, one gets the trial; if
its worker dies, the lease runs out and the next asker gets it.

Time is Redis's own clock (``TIME``), so workers with skewed clocks agree on
when ``reset_after`` has passed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import redis
import structlog

from incident import keys

log = structlog.get_logger(__name__)

PREFIX = keys.BREAKER
REGISTRY = keys.BREAKER_REGISTRY
# Rendered keys come from label values; a long one is hashed to keep keys small.
_MAX_KEY = 200
# A breaker unused for this many reset_after periods (after it may close) is
# forgotten: closed, it held at most a few failures that long ago.
IDLE_RESETS = 10
_MIN_IDLE_MS = 1000
_PRUNE_BATCH = 500


def idle_ms(reset_after: float) -> int:
    """How long an unused breaker is kept once it may close, in milliseconds."""
    return max(int(reset_after * 1000) * IDLE_RESETS, _MIN_IDLE_MS)

_NOW = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Every write sets the hash's expiry (ARGV idle ms past the moment it may
# close), so a breaker nobody uses goes away: a templated key such as
# {labels.instance} would otherwise leave one per value ever seen. An open
# breaker lives at least until its next trial may start.

# KEYS: breaker hash, registry set. ARGV: token, trial lease ms, reset ms, idle ms.
# Returns {verdict, ms}: 'closed' (go), 'trial' (go, as the one half-open trial),
# or 'open' (refused) with the time the next trial may start.
_ACQUIRE = _NOW + """
local state = redis.call('HGET', KEYS[1], 'state')
local reset = tonumber(ARGV[3])
local idle = tonumber(ARGV[4])
if not state then return {'closed', now} end
if state == 'closed' then
  redis.call('PEXPIRE', KEYS[1], idle)
  return {'closed', now}
end
if state == 'open' then
  local opened = tonumber(redis.call('HGET', KEYS[1], 'opened_at'))
  if now < opened + reset then
    redis.call('PEXPIRE', KEYS[1], opened + reset - now + idle)
    return {'open', opened + reset}
  end
elseif state == 'half_open' then
  local lease = tonumber(redis.call('HGET', KEYS[1], 'trial_until'))
  if now < lease then
    -- The same run asking again (its first answer was lost): still its trial.
    if redis.call('HGET', KEYS[1], 'trial_token') == ARGV[1] then return {'trial', now} end
    return {'open', lease}
  end
end
redis.call('HSET', KEYS[1], 'state', 'half_open', 'trial_token', ARGV[1],
           'trial_until', now + tonumber(ARGV[2]), 'changed_at', now)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) + idle)
return {'trial', now}
"""

# KEYS: breaker hash, registry set. ARGV: 'success'|'failure', token, threshold,
# reset ms, remediation, key, idle ms. Returns {state after, transition or ''}.
_RECORD = _NOW + """
redis.call('SADD', KEYS[2], KEYS[1])
redis.call('HSET', KEYS[1], 'remediation', ARGV[5], 'key', ARGV[6],
           'threshold', ARGV[3], 'reset_ms', ARGV[4])
local reset = tonumber(ARGV[4])
local idle = tonumber(ARGV[7])
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local is_trial = state == 'half_open' and redis.call('HGET', KEYS[1], 'trial_token') == ARGV[2]
if ARGV[1] == 'success' then
  if is_trial then
    redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0, 'changed_at', now)
    redis.call('HDEL', KEYS[1], 'trial_token', 'trial_until', 'opened_at')
    redis.call('PEXPIRE', KEYS[1], idle)
    return {'closed', 'closed'}
  end
  if state == 'closed' then
    redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0)
    redis.call('PEXPIRE', KEYS[1], idle)
  end
  return {state, ''}
end
if is_trial then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', now, 'changed_at', now)
  redis.call('HDEL', KEYS[1], 'trial_token', 'trial_until')
  redis.call('PEXPIRE', KEYS[1], reset + idle)
  return {'open', 'reopened'}
end
if state ~= 'closed' then return {state, ''} end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
if failures >= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', now, 'changed_at', now)
  redis.call('PEXPIRE', KEYS[1], reset + idle)
  return {'open', 'opened'}
end
redis.call('HSET', KEYS[1], 'state', 'closed')
redis.call('PEXPIRE', KEYS[1], idle)
return {'closed', ''}
"""

# KEYS: breaker hash. ARGV: token. The trial ended without a verdict on the
# target (its request was at fault): the next asker may have the trial now.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'state') == 'half_open'
   and redis.call('HGET', KEYS[1], 'trial_token') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'trial_until', 0)
  redis.call('HDEL', KEYS[1], 'trial_token')
  return 1
end
return 0
"""

# KEYS: registry set, then breaker hashes. ARGV: idle periods per reset_after.
# Drops members whose hash has expired, checked here so that a breaker written
# meanwhile is never dropped. A hash written before breakers expired has no
# expiry: it gets the one it would have had.
_PRUNE = _NOW + """
local dropped = 0
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    dropped = dropped + redis.call('SREM', KEYS[1], KEYS[i])
  elseif redis.call('PTTL', KEYS[i]) == -1 then
    local reset = tonumber(redis.call('HGET', KEYS[i], 'reset_ms') or '0')
    local keep = math.max(reset * tonumber(ARGV[1]), 1000)
    local state = redis.call('HGET', KEYS[i], 'state')
    if state == 'open' then
      local opened = tonumber(redis.call('HGET', KEYS[i], 'opened_at') or now)
      keep = keep + math.max(opened + reset - now, 0)
    elseif state == 'half_open' then
      local lease = tonumber(redis.call('HGET', KEYS[i], 'trial_until') or now)
      keep = keep + math.max(lease - now, 0)
    end
    redis.call('PEXPIRE', KEYS[i], keep)
  end
end
return dropped
"""


class Verdict(StrEnum):
    CLOSED = "closed"
    TRIAL = "trial"
    OPEN = "open"


@dataclass(frozen=True)
class Permit:
    verdict: Verdict
    # For OPEN: when the next trial may start (Redis clock, ms since the epoch).
    at_ms: int

    @property
    def allowed(self) -> bool:
        return self.verdict is not Verdict.OPEN

    @property
    def retry_at(self) -> datetime:
        return datetime.fromtimestamp(self.at_ms / 1000, UTC)


def redis_key(remediation: str, key: str | None) -> str:
    """The hash holding one breaker: per remediation, and per target when the rule keys it."""
    if not key:
        return PREFIX + remediation
    if len(key) > _MAX_KEY:
        key = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    return f"{PREFIX}{remediation}:{key}"


class CircuitBreakers:
    """The fleet's breakers. Each call is one round trip to Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._acquire = client.register_script(_ACQUIRE)
        self._record = client.register_script(_RECORD)
        self._release = client.register_script(_RELEASE)
        self._prune = client.register_script(_PRUNE)

    def acquire(self, key: str, *, token: str, trial_lease: float, reset_after: float) -> Permit:
        """May this attempt run? ``token`` names it, for the outcome of a trial."""
        verdict, at_ms = self._acquire(
            keys=[key, REGISTRY],
            args=[token, int(trial_lease * 1000), int(reset_after * 1000), idle_ms(reset_after)],
        )
        return Permit(Verdict(_text(verdict)), int(at_ms))

    def record(
        self,
        key: str,
        *,
        succeeded: bool,
        token: str,
        threshold: int,
        reset_after: float,
        remediation: str,
        target: str,
    ) -> str | None:
        """Count an outcome; returns the transition it caused (opened, reopened, closed)."""
        _, transition = self._record(
            keys=[key, REGISTRY],
            args=[
                "success" if succeeded else "failure",
                token,
                threshold,
                int(reset_after * 1000),
                remediation,
                target,
                idle_ms(reset_after),
            ],
        )
        transition = _text(transition)
        if transition:
            log.warning(
                "circuit breaker " + transition, remediation=remediation, breaker_key=target
            )
        return transition or None

    def release_trial(self, key: str, *, token: str) -> bool:
        """The trial ``token`` held says nothing of the target: let the next run be the trial."""
        return bool(self._release(keys=[key], args=[token]))

    def states(self) -> list[dict[str, Any]]:
        """Every breaker that has seen an outcome, for ``GET /api/breakers`` and metrics."""
        keys = sorted(_text(each) for each in self.client.smembers(REGISTRY))
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        pipe.time()
        *hashes, (seconds, micros) = pipe.execute()
        now_ms = seconds * 1000 + micros // 1000
        gone = [key for key, fields in zip(keys, hashes, strict=True) if not fields]
        self._drop(gone)
        return [
            _describe(key, {_text(k): _text(v) for k, v in fields.items()}, now_ms)
            for key, fields in zip(keys, hashes, strict=True)
            if fields
        ]

    def prune(self) -> int:
        """Forget expired breakers (and give old ones an expiry); answers how many were dropped."""
        dropped = 0
        batch: list[str] = []
        for member in self.client.sscan_iter(REGISTRY, count=_PRUNE_BATCH):
            batch.append(_text(member))
            if len(batch) >= _PRUNE_BATCH:
                dropped += self._drop(batch)
                batch = []
        return dropped + self._drop(batch)

    def _drop(self, keys: list[str]) -> int:
        if not keys:
            return 0
        return int(self._prune(keys=[REGISTRY, *keys], args=[IDLE_RESETS]))


def _describe(key: str, fields: dict[str, str], now_ms: int) -> dict[str, Any]:
    state = fields.get("state", "closed")
    reset_ms = int(fields.get("reset_ms", 0))
    opened_ms = int(fields["opened_at"]) if "opened_at" in fields else None
    next_trial = None
    if state == "open" and opened_ms is not None:
        next_trial = opened_ms + reset_ms
        if now_ms >= next_trial:
            # Nobody has asked since reset_after passed: the next asker gets the trial.
            state = "half_open"
    return {
        "remediation": fields.get("remediation", key.removeprefix(PREFIX)),
        "key": fields.get("key") or None,
        "state": state,
        "consecutive_failures": int(fields.get("failures", 0)),
        "failure_threshold": int(fields.get("threshold", 0)),
        "reset_after_seconds": reset_ms / 1000,
        "opened_at": _iso(opened_ms),
        "next_trial_at": _iso(next_trial),
    }


def _iso(ms: int | None) -> str | None:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat() if ms is not None else None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
