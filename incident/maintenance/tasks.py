"""Celery tasks for maintenance, sent by beat (worker/app.py builds the schedule from the rules).

Each takes its job's Redis lock first (maintenance/locks.py), so two beats, or
a run that overlaps the next tick, never do the work twice. They acknowledge
on start: a backup outlasts the broker's visibility timeout, and a tick lost
with its worker is simply the next tick's work (a backup that never happened
shows in the next verification).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache

import structlog
from sqlalchemy.exc import OperationalError

from incident.config import get_settings
from incident.incidents.tasks import apply_notification
from incident.maintenance import watchdog
from incident.maintenance.backup_verify import verify_latest
from incident.maintenance.backups import BackupError, create_backup
from incident.maintenance.internal import InternalAlerts
from incident.maintenance.locks import run_once
from incident.maintenance.logfiles import rotate_logs as rotate_log_files
from incident.maintenance.retention import purge_resolved
from incident.maintenance.stale import resolve_stale
from incident.notifications.tasks import channels, enqueue_deliveries
from incident.sharedstate import get_redis
from incident.worker import app
from incident.worker.app import worker_rules

log = structlog.get_logger(__name__)

BACKUP_ALERT = "IncidentBackupFailing"
BACKUP_ARMED_AT = "incident:backup:armed-at"
BACKUP_TIME_LIMIT = 2 * 3600
SHORT_TIME_LIMIT = 600


def clock() -> datetime:
    return datetime.now(UTC)


@lru_cache(maxsize=1)
def internal_alerts() -> InternalAlerts:
    return InternalAlerts(get_redis(), get_settings().public_url)


@app.task(name="incident.maintenance.purge_resolved", acks_late=False,
          time_limit=SHORT_TIME_LIMIT,
          autoretry_for=(OperationalError,), max_retries=3, retry_backoff=10)
def purge_resolved_incidents() -> int | None:
    retention = worker_rules().maintenance.retention
    report = run_once(
        get_redis(), "purge-resolved",
        lambda: purge_resolved(retention, now=datetime.now(UTC), client=get_redis()),
        timeout=SHORT_TIME_LIMIT, min_gap=60,
    )
    return report.incidents if report else None


@app.task(name="incident.maintenance.resolve_stale", acks_late=False,
          time_limit=SHORT_TIME_LIMIT,
          autoretry_for=(OperationalError,), max_retries=3, retry_backoff=10)
def resolve_stale_incidents() -> int | None:
    def work() -> int:
        resolved, created = resolve_stale(worker_rules(), channels(), get_redis())
        enqueue_deliveries(created)
        return len(resolved)

    return run_once(get_redis(), "resolve-stale", work, timeout=SHORT_TIME_LIMIT, min_gap=30)


@app.task(name="incident.maintenance.rotate_logs", acks_late=False,
          time_limit=SHORT_TIME_LIMIT)
def rotate_logs() -> int | None:
    log_dir = get_settings().log_dir
    if log_dir is None:
        return None
    policy = worker_rules().maintenance.log_rotation
    report = run_once(get_redis(), "rotate-logs", lambda: rotate_log_files(log_dir, policy),
                      timeout=SHORT_TIME_LIMIT, min_gap=30)
    return report.rotated if report else None


@app.task(name="incident.maintenance.backup", acks_late=False,
          time_limit=BACKUP_TIME_LIMIT,
          soft_time_limit=BACKUP_TIME_LIMIT - 60)
def backup() -> bool | None:
    """Make a backup, then verify it at once."""
    settings = get_settings()
    policy = worker_rules().maintenance.backup

    def work() -> bool:
        try:
            create_backup(settings.require_database_url(), settings.backup_dir, keep=policy.keep,
                          progress=_progress("backup"))
        except BackupError as exc:
            _backup_failing([f"backup failed: {exc}"])
            return False
        return _verify()

    return run_once(get_redis(), "backup", work, timeout=BACKUP_TIME_LIMIT, min_gap=300)


@app.task(name="incident.maintenance.verify_backup", acks_late=False,
          time_limit=BACKUP_TIME_LIMIT,
          soft_time_limit=BACKUP_TIME_LIMIT - 60)
def verify_backup() -> bool | None:
    """The recovery-point check between backups: is the newest one still young enough?"""
    return run_once(get_redis(), "backup", _verify, timeout=BACKUP_TIME_LIMIT, min_gap=60)


def _verify() -> bool:
    settings = get_settings()
    policy = worker_rules().maintenance.backup
    now = clock()
    result = verify_latest(settings.require_database_url(), settings.backup_dir,
                           max_age=policy.max_age, mode=policy.verify, progress=_progress("verify"),
                           now=now)
    if result.ok:
        _apply(internal_alerts().resolved(BACKUP_ALERT, severity=policy.severity,
                                          summary="Backups are failing"), BACKUP_ALERT)
        return True
    if result.backup is None and _younger_than(now, policy.max_age):
        # A new installation has no backup yet; that is a problem only once
        # it has run longer than the recovery-point objective.
        log.info("no backup yet; within max_age of the first check", max_age=str(policy.max_age))
        return False
    _backup_failing(result.problems)
    return False


def _younger_than(now: datetime, age: timedelta) -> bool:
    client = get_redis()
    client.set(BACKUP_ARMED_AT, now.timestamp(), nx=True)
    armed = datetime.fromtimestamp(float(client.get(BACKUP_ARMED_AT)), UTC)
    return now - armed < age


def _backup_failing(problems: list[str]) -> None:
    policy = worker_rules().maintenance.backup
    log.error("backup verification failed", problems=problems)
    _apply(internal_alerts().firing(
        BACKUP_ALERT, severity=policy.severity, summary="Backups are failing",
        description="; ".join(problems) or "verification failed",
    ), None)


@app.task(name="incident.maintenance.watchdog", acks_late=False,
          time_limit=60,
          autoretry_for=(OperationalError,), max_retries=3, retry_backoff=2)
def check_watchdog() -> str | None:
    rule = worker_rules().maintenance.watchdog
    if rule is None:
        return None

    def work() -> str:
        notification = watchdog.check(get_redis(), rule, internal_alerts())
        if notification is None:
            return "quiet"
        silent = notification["status"] == "firing"
        _apply(notification, None if silent else watchdog.SILENT_ALERT)
        return "silent" if silent else "heard"

    return run_once(get_redis(), "watchdog", work, timeout=60)


def _apply(notification: dict | None, ends_episode: str | None) -> None:
    if notification is None:
        return
    apply_notification(notification)
    if ends_episode is not None:
        internal_alerts().end_episode(ends_episode)


def _progress(job: str):
    def say(line: str) -> None:
        log.info(line, job=job)

    return say
