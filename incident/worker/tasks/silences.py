"""Silences asked for outside the API (Slack's ``Silence`` menu): one task per request.

The task's id is the silence's reference, so a retry, or a message delivered
twice, finds the silence an earlier run made instead of making another.
"""

from __future__ import annotations

from datetime import timedelta

import structlog
from celery import Task
from sqlalchemy.exc import OperationalError

from incident.incidents.lifecycle import Actor
from incident.integrations.alertmanager import AlertmanagerRefused, AlertmanagerUnavailable
from incident.silences.service import (
    REFERENCE_PREFIX,
    SILENCE_TASK,
    IncidentNotFound,
    NothingToSilence,
    SilencingNotConfigured,
)
from incident.worker.app import app
from incident.worker.tasks import context

log = structlog.get_logger(__name__)


@app.task(
    name=SILENCE_TASK, bind=True,
    # Only what passes: no Alertmanager answering, the database briefly away.
    autoretry_for=(AlertmanagerUnavailable, OperationalError),
    retry_backoff=2, retry_backoff_max=60, retry_jitter=True, max_retries=8,
    soft_time_limit=60, time_limit=90,
)
def silence_incident(
    self: Task, *, incident_id: int, by: str, duration_seconds: int, user: str | None = None,
    name: str | None = None, comment: str | None = None,
) -> bool:
    try:
        context().silences.silence(
            incident_id, Actor(by, user, name), timedelta(seconds=duration_seconds), comment,
            reference=REFERENCE_PREFIX + self.request.id,
        )
    except (IncidentNotFound, SilencingNotConfigured, NothingToSilence, AlertmanagerRefused,
            ValueError) as exc:
        log.warning("silence_not_made", incident_id=incident_id, error=str(exc))
        return False
    return True
