"""Remediations: one task per attempt, on ``remediate``, and beat's sweeper."""

from __future__ import annotations

import redis
import structlog
from sqlalchemy.exc import OperationalError

from incident.maintenance.locks import run_once
from incident.remediation.engine import RUN_TASK
from incident.worker.app import app
from incident.worker.tasks import context


@app.task(
    name=RUN_TASK,
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
    return context().remediations.run_attempt(run_id, attempt).status


@app.task(name="incident.remediation.sweep", time_limit=60)
def sweep_remediations() -> int | None:
    """Long waits that are due, attempts lost with the broker, attempts whose worker died."""
    ctx = context()
    return run_once(ctx.redis, "sweep-remediations",
                    lambda: len(ctx.remediations.sweep().next_attempts), timeout=60)
