"""Every task's queue, in one map. A task without a route is a test failure."""

from __future__ import annotations

from kombu import Queue

from incident.queues import INGEST, MAINTENANCE, NOTIFY, PAGE, QUEUES, REMEDIATE

__all__ = ["INGEST", "MAINTENANCE", "NOTIFY", "PAGE", "QUEUES", "REMEDIATE", "TASK_ROUTES"]

TASK_ROUTES: dict[str, dict[str, str]] = {
    "incident.incidents.ingest_webhook": {"queue": INGEST},
    # Pages are sent with queue=PAGE at the call site; the rest default here.
    "incident.notifications.deliver": {"queue": NOTIFY},
    # A few small tasks (one per channel every few seconds) that release many
    # coalesced rows: behind a storm's backlog in `notify` they would starve.
    "incident.notifications.flush_slack_digest": {"queue": PAGE},
    "incident.notifications.update_slack_storm": {"queue": PAGE},
    "incident.notifications.fire_escalations": {"queue": PAGE},
    # Releasing incidents from ended maintenance windows pages: not behind a backup either.
    "incident.windows.release_ended": {"queue": PAGE},
    "incident.notifications.sweep_undelivered": {"queue": MAINTENANCE},
    # An acknowledgement in PagerDuty stops escalations: it must not wait behind a storm.
    "incident.notifications.apply_pagerduty_event": {"queue": PAGE},
    # Someone is waiting for a click to take effect, and it may page (acknowledge).
    "incident.interactions.slack_click": {"queue": PAGE},
    "incident.remediation.run": {"queue": REMEDIATE},
    # Asked for by a person waiting for the answer in Slack.
    "incident.silences.silence": {"queue": PAGE},
    "incident.remediation.sweep": {"queue": MAINTENANCE},
    "incident.maintenance.purge_resolved": {"queue": MAINTENANCE},
    "incident.maintenance.resolve_stale": {"queue": MAINTENANCE},
    "incident.maintenance.rotate_logs": {"queue": MAINTENANCE},
    "incident.maintenance.backup": {"queue": MAINTENANCE},
    "incident.maintenance.verify_backup": {"queue": MAINTENANCE},
    # The dead-man's switch must not wait behind a long backup.
    "incident.maintenance.watchdog": {"queue": PAGE},
}


def task_queues() -> list[Queue]:
    return [Queue(name, routing_key=name) for name in QUEUES]
