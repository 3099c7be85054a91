"""Backups and the Watchdog as beat runs them, each raising or resolving an internal incident.

Internal incidents go through ingestion like any Alertmanager webhook, so
they are grouped, classified, escalated and resolved the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import redis
import structlog

from incident import keys
from incident.config import Settings
from incident.incidents.events import EventBus
from incident.incidents.ingest import ingest_payload
from incident.incidents.repeats import RepeatCache
from incident.maintenance import watchdog
from incident.maintenance.backup_verify import VerifyResult, verify_latest
from incident.maintenance.backups import BackupError, create_backup
from incident.maintenance.internal import InternalAlerts
from incident.rules import Rules

log = structlog.get_logger(__name__)

BACKUP_ALERT = "IncidentBackupFailing"


def clock() -> datetime:
    return datetime.now(UTC)


class MaintenanceJobs:
    def __init__(
        self, settings: Settings, rules: Rules, client: redis.Redis, alerts: InternalAlerts,
        repeats: RepeatCache, events: EventBus,
    ) -> None:
        self.settings = settings
        self.rules = rules
        self.redis = client
        self.alerts = alerts
        self.repeats = repeats
        self.events = events

    def backup(self) -> bool:
        """Make a backup, then verify it at once."""
        policy = self.rules.maintenance.backup
        try:
            create_backup(self.settings.require_database_url(), self.settings.backup_dir,
                          keep=policy.keep, progress=_progress("backup"))
        except BackupError as exc:
            self.backup_failed(exc)
            return False
        return self.verify()

    def verify(self) -> bool:
        """The recovery-point check: the newest backup restores and is young enough."""
        policy = self.rules.maintenance.backup
        result = verify_latest(
            self.settings.require_database_url(), self.settings.backup_dir,
            max_age=policy.max_age, mode=policy.verify, progress=_progress("verify"), now=clock(),
        )
        return self.verification_done(result)

    def backup_failed(self, error: BackupError) -> None:
        """Raise the backup incident: a backup of the configured directory failed."""
        self._backup_failing([f"backup failed: {error}"])

    def verification_done(self, result: VerifyResult) -> bool:
        """Raise or resolve the backup incident by a verification of the configured
        directory, whoever ran it (beat or ``incident backup``); whether it passed."""
        policy = self.rules.maintenance.backup
        if result.ok:
            self._apply(self.alerts.resolved(BACKUP_ALERT, severity=policy.severity,
                                             summary="Backups are failing"), BACKUP_ALERT)
            return True
        if result.backup is None and self._younger_than(clock(), policy.max_age):
            # A new installation has no backup yet; that is a problem only once
            # it has run longer than the recovery-point objective.
            log.info("no backup yet; within max_age of the first check", max_age=str(policy.max_age))
            return False
        self._backup_failing(result.problems)
        return False

    def watchdog(self) -> str | None:
        """Raise the silent-pipeline incident, or resolve it; None when no Watchdog is set."""
        rule = self.rules.maintenance.watchdog
        if rule is None:
            return None
        webhook = watchdog.check(self.redis, rule, self.alerts)
        if webhook is None:
            return "quiet"
        silent = webhook["status"] == "firing"
        self._apply(webhook, None if silent else watchdog.SILENT_ALERT)
        return "silent" if silent else "heard"

    def _younger_than(self, now: datetime, age: timedelta) -> bool:
        self.redis.set(keys.BACKUP_ARMED_AT, now.timestamp(), nx=True)
        armed = datetime.fromtimestamp(float(self.redis.get(keys.BACKUP_ARMED_AT)), UTC)
        return now - armed < age

    def _backup_failing(self, problems: list[str]) -> None:
        policy = self.rules.maintenance.backup
        log.error("backup verification failed", problems=problems)
        self._apply(self.alerts.firing(
            BACKUP_ALERT, severity=policy.severity, summary="Backups are failing",
            description="; ".join(problems) or "verification failed",
        ), None)

    def _apply(self, webhook: dict | None, ends_episode: str | None) -> None:
        """An internal alert through the pipeline, as if Alertmanager had sent it."""
        if webhook is None:
            return
        ingest_payload(webhook, rules=self.rules, repeats=self.repeats, events=self.events)
        if ends_episode is not None:
            self.alerts.end_episode(ends_episode)


def _progress(job: str) -> Callable[[str], None]:
    def say(line: str) -> None:
        log.info(line, job=job)

    return say
