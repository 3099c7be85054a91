"""Notifications the worker could not apply after every retry, kept for replay.

Giving up on a message must never mean losing an alert silently: it is parked
in Redis with the error, logged, and can be sent through ingestion again once
the cause (usually the database) is fixed.

The list is bounded, so a long outage cannot fill Redis (the broker's own
memory): past ``MAX_PARKED`` records the oldest go, and a payload larger than
``MAX_PARKED_BYTES`` is kept as a summary only. Both are logged as errors
with what was lost; Alertmanager re-sends every firing group each
``repeat_interval``, which restores the state either carried.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import redis
import structlog

from incident import keys

DEAD_LETTERS_KEY = keys.DEAD_LETTERS
MAX_PARKED = 10_000
MAX_PARKED_BYTES = 512 * 1024
# An error's repr can be long (a whole SQL statement); its start says what happened.
MAX_ERROR_CHARS = 2_000

log = structlog.get_logger(__name__)


def park(client: redis.Redis, payload: Any, *, task_id: str, error: str) -> None:
    record: dict[str, Any] = {
        "at": time.time(), "task_id": task_id, "error": error[:MAX_ERROR_CHARS], "payload": payload,
    }
    raw = orjson.dumps(record)
    if len(raw) > MAX_PARKED_BYTES:
        log.error(
            "parked payload too large; only its summary is kept", task_id=task_id,
            size=len(raw), limit=MAX_PARKED_BYTES,
        )
        record["payload"] = None
        record["summary"] = summary(payload)
        record["size"] = len(raw)
        raw = orjson.dumps(record)
    with client.pipeline(transaction=True) as pipe:
        pipe.lpush(DEAD_LETTERS_KEY, raw)
        pipe.ltrim(DEAD_LETTERS_KEY, 0, MAX_PARKED - 1)
        length, _ = pipe.execute()
    if length > MAX_PARKED:
        log.error(
            "dead-letter list full; dropped the oldest parked payloads",
            dropped=length - MAX_PARKED, limit=MAX_PARKED,
        )


def summary(payload: Any) -> dict[str, Any]:
    """What identifies a webhook without its alerts: enough to find the group."""
    if not isinstance(payload, dict):
        return {"type": type(payload).__name__}
    alerts = payload.get("alerts")
    return {
        "receiver": str(payload.get("receiver"))[:200],
        "groupKey": str(payload.get("groupKey"))[:1000],
        "status": str(payload.get("status"))[:20],
        "alerts": len(alerts) if isinstance(alerts, list) else None,
    }


def parked(client: redis.Redis) -> list[dict[str, Any]]:
    return [orjson.loads(raw) for raw in client.lrange(DEAD_LETTERS_KEY, 0, -1)]


def take_oldest(client: redis.Redis) -> dict[str, Any] | None:
    raw = client.rpop(DEAD_LETTERS_KEY)
    return orjson.loads(raw) if raw is not None else None
