"""Maintenance windows: releasing the incidents of windows that have ended."""

from __future__ import annotations

from sqlalchemy.exc import OperationalError

from incident.maintenance.locks import run_once
from incident.windows.suppression import RELEASE_TASK, release
from incident.worker.app import app
from incident.worker.tasks import context


@app.task(name=RELEASE_TASK, autoretry_for=(OperationalError,), max_retries=3, retry_backoff=2,
          time_limit=60)
def release_maintenance() -> int | None:
    # Row locks already release each incident once; the lock spares a second beat's poll.
    ctx = context()
    return run_once(ctx.redis, "release-maintenance",
                    lambda: release(ctx.engine, ctx.events), timeout=60)
