"""Notifications: delivering ledger rows, Slack digests, escalation timers, the sweeper,
and PagerDuty's webhook events coming back."""

from __future__ import annotations

import random

import structlog
from sqlalchemy.exc import OperationalError

from incident.maintenance.locks import run_once
from incident.notifications import delivery, sweeper
from incident.notifications.digest import FLUSH_TASK, RetryFlush, is_mail
from incident.notifications.ledger import DELIVER_TASK
from incident.notifications.notifiers import NotConfigured
from incident.notifications.pagerduty_events import APPLY_TASK, apply_event
from incident.notifications.storm import UPDATE_TASK, RetryStorm
from incident.worker.app import app
from incident.worker.tasks import context

log = structlog.get_logger(__name__)

BACKOFF_CAP = 60.0
WAIT_LIMIT = 300
# Seconds kept between a retry's countdown plus its run and the broker's
# visibility timeout.
VISIBILITY_MARGIN = 15.0


def backoff(retries: int) -> float:
    """Exponential, capped at a minute, with full jitter over its upper half."""
    ceiling = min(BACKOFF_CAP, 2.0 * 2**retries)
    return ceiling / 2 + random.random() * ceiling / 2


def within_visibility(task, countdown: float) -> float:
    """``countdown``, cut so the retried message is acknowledged before the broker's
    visibility timeout.

    The Redis broker hands a message still unacknowledged after the timeout to
    another worker, and a retry's message waits out its countdown unacknowledged
    in the worker that took it; with its run (up to the hard time limit) after,
    a longer wait, such as a Retry-After of hours, would be sent twice.
    """
    visibility = context().settings.broker_visibility_timeout
    ceiling = max(1.0, visibility - (task.time_limit or 0) - VISIBILITY_MARGIN)
    if countdown > ceiling:
        log.info("retry countdown cut below the broker's visibility timeout",
                 asked=round(countdown, 1), countdown=ceiling)
    return min(countdown, ceiling)


@app.task(
    name=DELIVER_TASK,
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
        return delivery.deliver(notification_id, task_id=self.request.id,
                                notifiers=context().notifiers)
    except NotConfigured as exc:
        delivery.mark_failed(notification_id, str(exc))
        return delivery.Outcome.FAILED
    except delivery.RetryLater as exc:
        # Celery's own count covers waits and failures; bounded all the same.
        ceiling = WAIT_LIMIT + self.max_retries
        if not exc.counts:
            raise self.retry(countdown=within_visibility(self, exc.countdown),
                             max_retries=ceiling) from None
        if failures >= self.max_retries:
            delivery.mark_failed(notification_id, f"gave up after {failures + 1} attempts: {exc.reason}")
            return delivery.Outcome.FAILED
        countdown = within_visibility(self, exc.countdown or backoff(failures))
        log.info("notification retry", countdown=round(countdown, 1), reason=exc.reason)
        raise self.retry(
            countdown=countdown, max_retries=ceiling,
            kwargs={"notification_id": notification_id, "failures": failures + 1},
        ) from None


@app.task(name=FLUSH_TASK, bind=True, max_retries=60, soft_time_limit=60, time_limit=90)
def flush_slack_digest(self, *, channel: str) -> int:
    """``channel``: a Slack channel, or ``mail:`` + the recipients of an email digest."""
    notifiers = context().notifiers
    if is_mail(channel):
        poster = notifiers.require_mailer()
    else:
        storms = notifiers.storms
        if storms is not None and storms.active(channel):
            # The storm message tells what the digest would have.
            moved = storms.absorb_digest(channel)
            notifiers.digests.done(channel)
            return moved
        wait = notifiers.slack_bucket.take(channel)
        if wait > 0:
            # Waiting for a token is no failure: a fresh flush comes back for it,
            # so no run of retries can leave the digest's rows behind.
            notifiers.digests.later(channel, wait)
            return 0
        poster = notifiers.require_slack()
    try:
        told = notifiers.digests.flush(channel, poster, task_id=self.request.id)
    except RetryFlush as exc:
        if self.request.retries >= self.max_retries:
            notifiers.digests.later(channel, backoff(self.request.retries))
            return 0
        countdown = exc.countdown or backoff(self.request.retries)
        raise self.retry(countdown=within_visibility(self, countdown)) from exc
    notifiers.digests.done(channel)
    return told


@app.task(name=UPDATE_TASK, bind=True, soft_time_limit=60, time_limit=90)
def update_slack_storm(self, *, channel: str) -> int:
    """Post or edit a Slack channel's storm message, or end its storm."""
    notifiers = context().notifiers
    storms = notifiers.require_storms()
    again = None
    try:
        told = storms.update(channel, notifiers.require_slack(), notifiers.slack_bucket,
                             task_id=self.request.id)
    except RetryStorm as exc:
        log.info("storm message waits", channel=channel, countdown=round(exc.countdown, 1),
                 reason=str(exc))
        told, again = 0, exc.countdown
    # Also when another worker holds the lock: the lock may be a killed worker's.
    storms.done(channel, **({"again_in": again} if again is not None else {}))
    return told


@app.task(name="incident.notifications.fire_escalations", autoretry_for=(OperationalError,),
          max_retries=3, retry_backoff=2, time_limit=60)
def fire_escalations() -> int | None:
    # SKIP LOCKED already fires each step once; the lock also spares the
    # database the second beat's identical poll.
    ctx = context()
    return run_once(ctx.redis, "fire-escalations",
                    lambda: sweeper.fire_escalations(ctx.rules, ctx.events), timeout=60)


@app.task(name="incident.notifications.sweep_undelivered", time_limit=60)
def sweep_undelivered() -> int | None:
    """Rows whose worker died, or whose message the broker lost."""
    ctx = context()
    return run_once(ctx.redis, "sweep-undelivered",
                    lambda: sweeper.sweep_undelivered(ctx.notifiers.digests,
                                                     storms=ctx.notifiers.storms),
                   timeout=60)


@app.task(name=APPLY_TASK, autoretry_for=(OperationalError,), max_retries=10,
          retry_backoff=2, retry_backoff_max=60, retry_jitter=True, time_limit=60)
def apply_pagerduty_event(*, event: dict) -> str:
    """Safe to run twice: the event id's row decides who applies it."""
    return apply_event(event, events=context().events).value
