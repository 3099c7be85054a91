"""Notifications the worker could not apply after every retry, kept for replay.

Giving up on a message must never mean losing an alert silently: it is parked
in Redis with the error, logged, and can be sent through ingestion again once
the cause (usually the database) is fixed.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import redis

from incident import keys

DEAD_LETTERS_KEY = keys.DEAD_LETTERS


def park(client: redis.Redis, payload: Any, *, task_id: str, error: str) -> None:
    record = {"at": time.time(), "task_id": task_id, "error": error, "payload": payload}
    client.lpush(DEAD_LETTERS_KEY, orjson.dumps(record))


def parked(client: redis.Redis) -> list[dict[str, Any]]:
    return [orjson.loads(raw) for raw in client.lrange(DEAD_LETTERS_KEY, 0, -1)]


def take_oldest(client: redis.Redis) -> dict[str, Any] | None:
    raw = client.rpop(DEAD_LETTERS_KEY)
    return orjson.loads(raw) if raw is not None else None
