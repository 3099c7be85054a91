"""Celery tasks for maintenance, sent by beat (worker/app.py builds the schedule from the rules).

Each takes its job's Redis lock first (maintenance/locks.py), so two beats, or
a run that overlaps the next tick, never do the work twice. They acknowledge
on start: a backup outlasts the broker's visibility timeout, and a tick lost
with its worker is simply the next tick's work (a backup that never happened
shows in the next verification).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.exc import OperationalError

from incident.maintenance.locks import run_once
from incident.maintenance.logfiles import rotate_logs as rotate_log_files
from incident.maintenance.retention import purge_resolved
from incident.maintenance.stale import resolve_stale
from incident.worker.app import app
from incident.worker.tasks import context

BACKUP_TIME_LIMIT = 2 * 3600
SHORT_TIME_LIMIT = 600


@app.task(name="incident.maintenance.purge_resolved", acks_late=False,
          time_limit=SHORT_TIME_LIMIT,
          autoretry_for=(OperationalError,), max_retries=3, retry_backoff=10)
def purge_resolved_incidents() -> int | None:
    ctx = context()
    retention = ctx.rules.maintenance.retention
    report = run_once(
        ctx.redis, "purge-resolved",
        lambda: purge_resolved(retention, now=datetime.now(UTC), client=ctx.redis),
        timeout=SHORT_TIME_LIMIT, min_gap=60,
    )
    return report.incidents if report else None


@app.task(name="incident.maintenance.resolve_stale", acks_late=False,
          time_limit=SHORT_TIME_LIMIT,
          autoretry_for=(OperationalError,), max_retries=3, retry_backoff=10)
def resolve_stale_incidents() -> int | None:
    ctx = context()
    return run_once(ctx.redis, "resolve-stale",
                    lambda: len(resolve_stale(ctx.rules, ctx.events, ctx.redis)),
                    timeout=SHORT_TIME_LIMIT, min_gap=30)


@app.task(name="incident.maintenance.rotate_logs", acks_late=False,
          time_limit=SHORT_TIME_LIMIT)
def rotate_logs(*, oversized_only: bool = False) -> int | None:
    """Every ``log_rotation.every``; with ``oversized_only``, the size check beat runs often."""
    ctx = context()
    log_dir = ctx.settings.log_dir
    if log_dir is None:
        return None
    policy = ctx.rules.maintenance.log_rotation
    # Separate locks: a size check just done must not hold off the periodic rotation.
    job, gap = ("rotate-oversized-logs", 10) if oversized_only else ("rotate-logs", 30)
    report = run_once(
        ctx.redis, job,
        lambda: rotate_log_files(log_dir, policy, oversized_only=oversized_only),
        timeout=SHORT_TIME_LIMIT, min_gap=gap,
    )
    return report.rotated if report else None


@app.task(name="incident.maintenance.backup", acks_late=False,
          time_limit=BACKUP_TIME_LIMIT,
          soft_time_limit=BACKUP_TIME_LIMIT - 60)
def backup() -> bool | None:
    """Make a backup, then verify it at once."""
    ctx = context()
    return run_once(ctx.redis, "backup", ctx.maintenance.backup,
                    timeout=BACKUP_TIME_LIMIT, min_gap=300)


@app.task(name="incident.maintenance.verify_backup", acks_late=False,
          time_limit=BACKUP_TIME_LIMIT,
          soft_time_limit=BACKUP_TIME_LIMIT - 60)
def verify_backup() -> bool | None:
    """The recovery-point check between backups: is the newest one still young enough?"""
    ctx = context()
    return run_once(ctx.redis, "backup", ctx.maintenance.verify,
                    timeout=BACKUP_TIME_LIMIT, min_gap=60)


@app.task(name="incident.maintenance.watchdog", acks_late=False,
          time_limit=60,
          autoretry_for=(OperationalError,), max_retries=3, retry_backoff=2)
def check_watchdog() -> str | None:
    ctx = context()
    if ctx.rules.maintenance.watchdog is None:
        return None
    return run_once(ctx.redis, "watchdog", ctx.maintenance.watchdog, timeout=60)
