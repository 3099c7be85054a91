"""Celery tasks for remediation: thin doors onto the engine, on the ``remediate`` queue."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

import redis
import structlog
from sqlalchemy.exc import OperationalError

from incident.maintenance.locks import run_once
from incident.notifications.tasks import channels, enqueue_deliveries
from incident.remediation.breaker import CircuitBreakers
from incident.remediation.engine import Attempt, RemediationEngine, Step
from incident.sharedstate import get_redis
from incident.worker import app
from incident.worker.app import worker_rules

log = structlog.get_logger(__name__)


@lru_cache(maxsize=1)
def engine() -> RemediationEngine:
    return RemediationEngine(worker_rules(), CircuitBreakers(get_redis()), channels())


def enqueue_attempts(attempts: Iterable[Attempt]) -> None:
    """After commit: one message per attempt, with time limits above its own timeout."""
    for attempt in attempts:
        run_remediation.apply_async(
            kwargs={"run_id": attempt.run_id, "attempt": attempt.attempt},
            countdown=attempt.countdown or None,
            soft_time_limit=attempt.soft_time_limit,
            time_limit=attempt.time_limit,
        )


def _after(step: Step) -> str | None:
    enqueue_deliveries(step.notifications)
    enqueue_attempts(step.next_attempts)
    return step.status


@app.task(
    name="incident.remediation.run",
    # Acknowledged on start: an attempt may run up to an hour, longer than the
    # broker's visibility timeout. A worker that dies mid-attempt leaves a
    # lease that runs out, and the sweeper moves the run on.
    acks_late=False,
    # The claim and the outcome are separate transactions, each safe to repeat:
    # a retry after a lost connection finds the attempt taken or still running.
    autoretry_for=(OperationalError, redis.ConnectionError, redis.TimeoutError),
    retry_backoff=2,
    retry_backoff_max=60,
    max_retries=10,
)
def run_remediation(*, run_id: int, attempt: int) -> str | None:
    structlog.contextvars.bind_contextvars(remediation_run=run_id, attempt=attempt)
    return _after(engine().run_attempt(run_id, attempt))


@app.task(name="incident.remediation.sweep", time_limit=60)
def sweep_remediations() -> int | None:
    """Attempts lost between commit and enqueue, or by a worker that died mid-attempt."""
    return run_once(get_redis(), "sweep-remediations", _sweep, timeout=60)


def _sweep() -> int:
    step = engine().sweep()
    _after(step)
    return len(step.next_attempts)
