"""Celery tasks for incidents: thin doors onto incidents.ingest."""

from __future__ import annotations

from functools import lru_cache

import redis
from sqlalchemy.exc import OperationalError

from incident.config import get_settings
from incident.incidents.digests import DigestCache
from incident.incidents.ingest import ingest_payload
from incident.rules import Rules, load_rules
from incident.sharedstate import get_redis
from incident.worker import app


@lru_cache(maxsize=1)
def worker_rules() -> Rules:
    return load_rules(get_settings().rules_file)


@lru_cache(maxsize=1)
def digest_cache() -> DigestCache:
    return DigestCache(get_redis())


@app.task(
    name="incident.incidents.ingest_webhook",
    # Only what passes: the database or Redis being briefly away. About ten
    # minutes of outage is ridden out before the message is given up.
    autoretry_for=(OperationalError, redis.ConnectionError, redis.TimeoutError),
    retry_backoff=1,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=30,
    soft_time_limit=60,
    time_limit=90,
)
def ingest_webhook(*, payload: dict) -> int | None:
    change = ingest_payload(payload, rules=worker_rules(), digests=digest_cache())
    return change.incident_id if change else None
