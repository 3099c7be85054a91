"""Celery tasks for notifications: thin doors onto delivery, digest, timers and the sweeper."""

from __future__ import annotations

import random
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import structlog
from sqlalchemy import and_, func, or_, select
from sqlalchemy.exc import OperationalError

from incident.config import get_settings
from incident.db import session_scope
from incident.integrations.base import DeliveryError
from incident.maintenance.locks import run_once
from incident.notifications import delivery, timers
from incident.notifications.digest import SlackDigests, digest_lines, mark_digested
from incident.notifications.ledger import record_notifications
from incident.notifications.models import DeliveryStatus, Notification
from incident.notifications.notifiers import NotConfigured, Notifiers
from incident.notifications.planning import Channels
from incident.notifications.ratelimit import TokenBucket
from incident.sharedstate import get_redis
from incident.worker import app
from incident.worker.app import worker_rules
from incident.worker.routes import NOTIFY, PAGE

log = structlog.get_logger(__name__)

BACKOFF_CAP = 60.0
WAIT_LIMIT = 300
SWEEP_AFTER = timedelta(minutes=2)


@lru_cache(maxsize=1)
def notifiers() -> Notifiers:
    client = get_redis()
    return Notifiers.from_settings(
        get_settings(),
        bucket=TokenBucket(client),
        digests=SlackDigests(client, _schedule_digest_flush),
    )


def channels() -> Channels:
    return Channels.from_settings(get_settings())


def enqueue_deliveries(created: Iterable[tuple[int, bool]]) -> None:
    """After commit: hand each new ledger row to a worker, pages on their own queue."""
    for notification_id, priority in created:
        deliver_notification.apply_async(
            kwargs={"notification_id": notification_id}, queue=PAGE if priority else NOTIFY
        )


def backoff(retries: int) -> float:
    """Exponential, capped at a minute, with full jitter over its upper half."""
    ceiling = min(BACKOFF_CAP, 2.0 * 2**retries)
    return ceiling / 2 + random.random() * ceiling / 2


@app.task(
    name="incident.notifications.deliver",
    bind=True,
    max_retries=10,
    autoretry_for=(OperationalError,),
    retry_backoff=2,
    retry_backoff_max=60,
    soft_time_limit=60,
    time_limit=90,
)
def deliver_notification(self, *, notification_id: int, failures: int = 0) -> str:
    """``failures`` counts real failures only: waiting for a parent message or a
    rate-limit token is not one, so a long wait cannot use up the retries."""
    structlog.contextvars.bind_contextvars(notification_id=notification_id)
    try:
        return delivery.deliver(notification_id, task_id=self.request.id, notifiers=notifiers())
    except NotConfigured as exc:
        delivery.mark_failed(notification_id, str(exc))
        return delivery.Outcome.FAILED
    except delivery.RetryLater as exc:
        # Celery's own count covers waits and failures; bounded all the same.
        ceiling = WAIT_LIMIT + self.max_retries
        if not exc.counts:
            raise self.retry(countdown=exc.countdown, max_retries=ceiling) from None
        if failures >= self.max_retries:
            delivery.mark_failed(notification_id, f"gave up after {failures + 1} attempts: {exc.reason}")
            return delivery.Outcome.FAILED
        countdown = exc.countdown or backoff(failures)
        log.info("notification retry", countdown=round(countdown, 1), reason=exc.reason)
        raise self.retry(
            countdown=countdown, max_retries=ceiling,
            kwargs={"notification_id": notification_id, "failures": failures + 1},
        ) from None


def _schedule_digest_flush(channel: str, countdown: float) -> None:
    flush_slack_digest.apply_async(kwargs={"channel": channel}, countdown=countdown)


@app.task(name="incident.notifications.flush_slack_digest", bind=True, max_retries=60,
          soft_time_limit=60, time_limit=90)
def flush_slack_digest(self, *, channel: str) -> int:
    n = notifiers()
    wait = n.slack_bucket.take(channel)
    if wait > 0:
        raise self.retry(countdown=wait)
    ids = n.digests.take(channel)
    lines = digest_lines(ids) if ids else []
    if lines:
        try:
            # Every row it covers is named in it, so a crash before the rows are
            # marked is recovered by looking, not by telling everyone again.
            ts = n.require_slack().post_digest(
                channel, [line for _, line, _ in lines], ledger_id=lines[0][0],
                covers=[(notification_id, stamp) for notification_id, _, stamp in lines],
            )
        except DeliveryError as exc:
            n.digests.put_back(channel, ids)
            if exc.retryable:
                raise self.retry(countdown=exc.retry_after or backoff(self.request.retries)) from exc
            for notification_id, _, _ in lines:
                delivery.mark_failed(notification_id, str(exc))
        else:
            mark_digested([notification_id for notification_id, _, _ in lines], ts)
    n.digests.done(channel)
    return len(lines)


@app.task(name="incident.notifications.fire_escalations", autoretry_for=(OperationalError,),
          max_retries=3, retry_backoff=2, time_limit=60)
def fire_escalations() -> int | None:
    # SKIP LOCKED already fires each step once; the lock also spares the
    # database the second beat's identical poll.
    return run_once(get_redis(), "fire-escalations", _fire_escalations, timeout=60)


def _fire_escalations() -> int:
    now = datetime.now(UTC)
    created: list[tuple[int, bool]] = []
    with session_scope() as session:
        for incident, entries in timers.fire_due(session, worker_rules(), now):
            created += record_notifications(session, incident, entries, worker_rules(), channels(), now)
    enqueue_deliveries(created)
    return len(created)


@app.task(name="incident.notifications.sweep_undelivered", time_limit=60)
def sweep_undelivered() -> int | None:
    """Rows nobody is working on: enqueued before a crash, or claimed by a worker that died."""
    return run_once(get_redis(), "sweep-undelivered", _sweep_undelivered, timeout=60)


def _sweep_undelivered() -> int:
    cutoff = datetime.now(UTC) - SWEEP_AFTER
    with session_scope() as session:
        rows = session.execute(
            select(Notification.id, Notification.priority).where(
                or_(
                    and_(Notification.status == DeliveryStatus.PENDING,
                         func.coalesce(Notification.claimed_at, Notification.created_at) < cutoff),
                    and_(Notification.status == DeliveryStatus.SENDING,
                         Notification.claimed_at < cutoff),
                )
            ).limit(500)
        ).all()
    enqueue_deliveries((row.id, row.priority) for row in rows)
    return len(rows)
