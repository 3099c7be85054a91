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

_NOW = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: breaker hash, registry set. ARGV: token, trial lease ms, reset ms.
# Returns {verdict, ms}: 'closed' (go), 'trial' (go, as the one half-open trial),
# or 'open' (refused) with the time the next trial may start.
_ACQUIRE = _NOW + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'closed' then return {'closed', now} end
local reset = tonumber(ARGV[3])
if state == 'open' then
  local opened = tonumber(redis.call('HGET', KEYS[1], 'opened_at'))
  if now < opened + reset then return {'open', opened + reset} end
elseif state == 'half_open' then
  local lease = tonumber(redis.call('HGET', KEYS[1], 'trial_until'))
  if now < lease then return {'open', lease} end
end
redis.call('HSET', KEYS[1], 'state', 'half_open', 'trial_token', ARGV[1],
           'trial_until', now + tonumber(ARGV[2]), 'changed_at', now)
return {'trial', now}
"""

# KEYS: breaker hash, registry set. ARGV: 'success'|'failure', token, threshold,
# reset ms, remediation, key. Returns {state after, transition or ''}.
_RECORD = _NOW + """
redis.call('SADD', KEYS[2], KEYS[1])
redis.call('HSET', KEYS[1], 'remediation', ARGV[5], 'key', ARGV[6],
           'threshold', ARGV[3], 'reset_ms', ARGV[4])
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local is_trial = state == 'half_open' and redis.call('HGET', KEYS[1], 'trial_token') == ARGV[2]
if ARGV[1] == 'success' then
  if is_trial then
    redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0, 'changed_at', now)
    redis.call('HDEL', KEYS[1], 'trial_token', 'trial_until', 'opened_at')
    return {'closed', 'closed'}
  end
  if state == 'closed' then redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0) end
  return {state, ''}
end
if is_trial then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', now, 'changed_at', now)
  redis.call('HDEL', KEYS[1], 'trial_token', 'trial_until')
  return {'open', 'reopened'}
end
if state ~= 'closed' then return {state, ''} end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
if failures >= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', now, 'changed_at', now)
  return {'open', 'opened'}
end
redis.call('HSET', KEYS[1], 'state', 'closed')
return {'closed', ''}
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

    def acquire(self, key: str, *, token: str, trial_lease: float, reset_after: float) -> Permit:
        """May this attempt run? ``token`` names it, for the outcome of a trial."""
        verdict, at_ms = self._acquire(
            keys=[key, REGISTRY],
            args=[token, int(trial_lease * 1000), int(reset_after * 1000)],
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
            ],
        )
        transition = _text(transition)
        if transition:
            log.warning(
                "circuit breaker " + transition, remediation=remediation, breaker_key=target
            )
        return transition or None

    def states(self) -> list[dict[str, Any]]:
        """Every breaker that has seen an outcome, for ``GET /api/breakers`` and metrics."""
        keys = sorted(_text(each) for each in self.client.smembers(REGISTRY))
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        pipe.time()
        *hashes, (seconds, micros) = pipe.execute()
        now_ms = seconds * 1000 + micros // 1000
        return [
            _describe(key, {_text(k): _text(v) for k, v in fields.items()}, now_ms)
            for key, fields in zip(keys, hashes, strict=True)
            if fields
        ]


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
