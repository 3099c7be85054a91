"""Ingestion: one task per webhook, on ``ingest`` or ``page``."""

from __future__ import annotations

import redis
import structlog
from celery import Task
from sqlalchemy.exc import OperationalError

from incident.incidents import deadletters
from incident.incidents.ingest import INGEST_TASK, ingest_payload
from incident.worker.app import app
from incident.worker.tasks import context

log = structlog.get_logger(__name__)


class KeepsItsSummary(Task):
    """A task whose retries show the summary it was sent with, never its arguments.

    Celery rebuilds a retried message from the request and leaves out
    ``kwargsrepr``, so the retry's headers, and Flower, would show
    ``saferepr(kwargs)``: the webhook payload, labels and all.
    """

    def signature_from_request(self, request=None, args=None, kwargs=None, queue=None,
                               **extra_options):
        request = self.request if request is None else request
        extra_options.setdefault("kwargsrepr", request.get("kwargsrepr") or _NOT_SHOWN)
        return super().signature_from_request(request, args, kwargs, queue, **extra_options)


# For a message sent without a summary (by hand, or by an older receiver).
_NOT_SHOWN = "{'payload': '(not shown)'}"


def _park_after_last_retry(task, exc, task_id, args, kwargs, einfo) -> None:
    """Celery's on_failure: the retries are spent, so keep the payload for replay."""
    log.error("ingest failed after every retry; payload parked", error=str(exc))
    deadletters.park(context().redis, kwargs.get("payload"), task_id=task_id, error=repr(exc))


@app.task(
    name=INGEST_TASK,
    base=KeepsItsSummary,
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
def ingest_webhook(*, payload: dict, received_at: float | None = None) -> int | None:
    # received_at: when the receiver took the webhook (epoch seconds); absent
    # from messages of an older receiver.
    ctx = context()
    change = ingest_payload(payload, rules=ctx.rules, repeats=ctx.repeats, events=ctx.events)
    return change.incident_id if change else None
