"""Slack clicks: act on the incident as the Slack user who clicked."""

from __future__ import annotations

from celery import Task
from sqlalchemy.exc import OperationalError

from incident.interactions.schemas import Click
from incident.interactions.service import CLICK_TASK, handle_click
from incident.worker.app import app
from incident.worker.tasks import context


@app.task(
    name=CLICK_TASK, bind=True, autoretry_for=(OperationalError,), max_retries=3, retry_backoff=1,
    soft_time_limit=20, time_limit=30,
)
def slack_click(
    self: Task, *, incident_id: int, action: str, user_id: str, user_name: str | None = None,
    duration: str | None = None, response_key: str | None = None,
) -> str:
    """Safe twice: a second run finds the incident already in that state and changes nothing."""
    click = Click(incident_id, action, user_id, user_name, duration, response_key)
    return handle_click(context(), click, reference=self.request.id)
