"""Celery tasks for incidents: thin doors onto incidents.ingest."""

from __future__ import annotations

from functools import lru_cache

import redis
import structlog
from sqlalchemy.exc import OperationalError

from incident.incidents import deadletters
from incident.incidents.digests import DigestCache
from incident.incidents.grouping import GroupChange
from incident.incidents.ingest import ingest_payload
from incident.sharedstate import get_redis
from incident.notifications.tasks import channels, enqueue_deliveries
from incident.remediation.tasks import enqueue_attempts
from incident.worker import app
from incident.worker.app import worker_rules

log = structlog.get_logger(__name__)


@lru_cache(maxsize=1)
def digest_cache() -> DigestCache:
    return DigestCache(get_redis())


def _park_after_last_retry(task, exc, task_id, args, kwargs, einfo) -> None:
    """Celery's on_failure: the retries are spent, so keep the payload for replay."""
    log.error("ingest failed after every retry; payload parked", error=str(exc))
    deadletters.park(get_redis(), kwargs.get("payload"), task_id=task_id, error=repr(exc))


def _hand_on(change: GroupChange) -> None:
    """After commit: notifications to deliver, remediations to start."""
    enqueue_deliveries(change.notifications)
    enqueue_attempts(change.remediations)


@app.task(
    name="incident.incidents.ingest_webhook",
    # Only what passes: the database or Redis being briefly away. With full
    # jitter, about half an hour of outage is ridden out; then the payload is
    # parked, never dropped.
    autoretry_for=(OperationalError, redis.ConnectionError, redis.TimeoutError),
    retry_backoff=1,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=60,
    on_failure=_park_after_last_retry,
    soft_time_limit=60,
    time_limit=90,
)
def ingest_webhook(*, payload: dict) -> int | None:
    return apply_notification(payload)


def apply_notification(payload: dict) -> int | None:
    """One notification, from a webhook or from incident itself, and what follows it."""
    change = ingest_payload(
        payload, rules=worker_rules(), digests=digest_cache(),
        channels=channels(), after_commit=_hand_on,
    )
    return change.incident_id if change else None
