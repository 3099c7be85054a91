"""Celery app and its configuration, built from settings when first needed."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import structlog
from celery import Celery, bootsteps
from celery.schedules import crontab
from celery.signals import worker_process_shutdown
from sqlalchemy import Engine, create_engine

from incident import metrics, tracing
from incident.config import Settings, get_settings
from incident.incidents import outbox
from incident.incidents.outbox import Message
from incident.logging import install_celery_logging
from incident.maintenance.logfiles import SIZE_CHECK_SECONDS
from incident.rules import load_rules
from incident.worker.routes import INGEST, TASK_ROUTES, task_queues
from incident.worker.transport import TRANSPORT as REDIS_TRANSPORT

TASK_MODULES = [
    "incident.worker.tasks.incidents",
    "incident.worker.tasks.notifications",
    "incident.worker.tasks.remediation",
    "incident.worker.tasks.maintenance",
    "incident.worker.tasks.silences",
    "incident.worker.tasks.interactions",
    "incident.worker.tasks.windows",
]
# How often each worker looks for outbox messages a crash left unsent.
OUTBOX_POLL_SECONDS = 1.0


def celery_config(settings: Settings) -> dict[str, Any]:
    broker_url = settings.require_broker_url()
    return {
        "broker_url": broker_url,
        "broker_transport": _transport_for(broker_url),
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 3,
        "broker_transport_options": {
            # Above every late-acknowledged task's hard time limit (asserted in
            # tests), so a message still being worked on is never handed out
            # twice; long work (remediations, backups) acknowledges early and
            # recovers through its own lease or lock instead.
            "visibility_timeout": settings.broker_visibility_timeout,
            "socket_connect_timeout": 3,
            "socket_timeout": 10,
        },
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # Fetch only for a free pool process. Without it, each countdown retry a
        # worker holds (Slack waiting for its token bucket) raises its prefetch
        # by one, and a page taken that way waits behind busy processes.
        "worker_disable_prefetch": _transport_for(broker_url) == REDIS_TRANSPORT,
        "task_default_queue": INGEST,
        "task_queues": task_queues(),
        "task_routes": TASK_ROUTES,
        # Workers report received/started/succeeded to Flower; a "sent" event
        # from the receiver would double the cost of every webhook's publish.
        "task_send_sent_event": False,
        "worker_send_task_events": True,
        "worker_hijack_root_logger": False,
        "beat_schedule": beat_schedule(settings),
        "enable_utc": True,
        "timezone": "UTC",
    }


def publish(message: Message) -> None:
    """Send one outbox message to the broker, with its own queue and options.

    Published in the trace context it was written in, whoever publishes it
    (the committing task, or the poll in another process).
    """
    with tracing.continued(message.options.get("headers")):
        app.send_task(
            message.task, kwargs=message.kwargs, queue=message.queue,
            countdown=message.countdown or None, **message.options,
        )


class OutboxPoll(bootsteps.StartStopStep):
    """Every worker polls the outbox: messages whose sender died after its commit go out
    within seconds, not when a sweeper next looks. It runs in the worker's main process,
    on its own small engine, so forked pool processes never share its connection."""

    requires = ("celery.worker.components:Timer",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self._timer: Any = None
        self._engine: Engine | None = None

    def start(self, worker: Any) -> None:
        self._timer = worker.timer.call_repeatedly(OUTBOX_POLL_SECONDS, self.poll, priority=10)

    def stop(self, worker: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._engine is not None:
            self._engine.dispose()

    def poll(self) -> None:
        try:
            if self._engine is None:
                self._engine = create_engine(
                    get_settings().require_database_url(), pool_size=1, max_overflow=0,
                    pool_pre_ping=True,
                )
            outbox.send_pending(self._engine, publish)
        except Exception as exc:  # the database or broker is away: the next poll tries again
            structlog.get_logger(__name__).warning("outbox poll failed", error=str(exc))


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Polling jobs every ``escalation_poll_seconds``; maintenance as the rules file says."""
    every = settings.escalation_poll_seconds
    maintenance = load_rules(settings.rules_file).maintenance
    schedule: dict[str, dict[str, Any]] = {
        "fire-escalations": {"task": "incident.notifications.fire_escalations", "schedule": every},
        "sweep-undelivered": {"task": "incident.notifications.sweep_undelivered", "schedule": every},
        "sweep-remediations": {"task": "incident.remediation.sweep", "schedule": every},
        "release-maintenance": {"task": "incident.windows.release_ended", "schedule": every},
        "purge-resolved": {"task": "incident.maintenance.purge_resolved", "schedule": 3600.0},
        "resolve-stale": {
            "task": "incident.maintenance.resolve_stale",
            "schedule": _clamp(maintenance.stale_after / 10, 30, 300),
        },
        "backup": {
            "task": "incident.maintenance.backup",
            "schedule": crontab(**maintenance.backup.crontab_fields),
        },
        # Between backups: notices when the newest one grows older than max_age.
        "verify-backup": {
            "task": "incident.maintenance.verify_backup",
            "schedule": _clamp(maintenance.backup.max_age / 4, 60, 3600),
        },
    }
    if settings.log_dir is not None:
        schedule["rotate-logs"] = {
            "task": "incident.maintenance.rotate_logs",
            "schedule": maintenance.log_rotation.every.total_seconds(),
        }
        schedule["rotate-oversized-logs"] = {
            "task": "incident.maintenance.rotate_logs",
            "schedule": SIZE_CHECK_SECONDS,
            "kwargs": {"oversized_only": True},
        }
    if maintenance.watchdog is not None:
        schedule["watchdog"] = {
            "task": "incident.maintenance.watchdog",
            "schedule": _clamp(maintenance.watchdog.max_silence / 4, 1, 60),
        }
    return schedule


def _clamp(interval: timedelta, low: float, high: float) -> float:
    return min(high, max(low, interval.total_seconds()))


def _transport_for(broker_url: str) -> str | None:
    if broker_url.split("://", 1)[0] in ("redis", "rediss"):
        return REDIS_TRANSPORT
    return None  # the URL's own scheme decides (amqp://, …)


@worker_process_shutdown.connect
def _flush_metrics(**_: Any) -> None:
    # Pool processes leave through os._exit, past atexit: write their last tally.
    metrics.flush()


app = Celery("incident", include=TASK_MODULES)
app.add_defaults(lambda: celery_config(get_settings()))
app.steps["worker"].add(OutboxPoll)
install_celery_logging(app)
tracing.install_celery_hooks()
