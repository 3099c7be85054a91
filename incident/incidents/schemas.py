"""The incident as the API shows it (INTERFACE's shape)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from incident.alerts.schemas import Text
from incident.incidents.store import Shown


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class AlertOut(_Out):
    fingerprint: str
    status: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: datetime
    ends_at: datetime | None


class TimelineEntryOut(_Out):
    at: datetime
    kind: str
    detail: dict[str, Any]


class RemediationOut(_Out):
    name: str
    status: str
    attempts: int
    last_error: str | None
    started_at: datetime | None
    finished_at: datetime | None
    # Beyond INTERFACE's shape: what the action printed or answered, trimmed.
    output: str | None = None


class NotificationOut(_Out):
    channel: str
    action: str
    # The routed Slack channel or routing-key variable name; '' for the channel's default.
    destination: str = ""
    status: str
    external_id: str | None
    at: datetime
    last_error: str | None = None

    @field_validator("status")
    @classmethod
    def _in_flight_is_pending(cls, status: str) -> str:
        # "sending" and "digested" are the ledger's own bookkeeping; to a reader
        # the message is still pending.
        return "pending" if status in ("sending", "digested") else status


class SilenceOut(_Out):
    """An Alertmanager silence made for the incident."""

    id: str = Field(validation_alias=AliasChoices("silence_id", "id"))
    starts_at: datetime
    ends_at: datetime
    created_by: str
    matchers: list[str]
    # Beyond INTERFACE's shape: when it was expired by hand (DELETE), else null.
    expired_at: datetime | None = None


class ActorOut(_Out):
    """Who made a change: where from (``by``), with their id and name there where known."""

    by: str
    user: str | None = None
    name: str | None = None


class IncidentOut(_Out):
    id: int
    key: str
    title: str
    summary: str | None
    severity: str
    status: str
    flapping: bool
    # Opened under a maintenance window: told to nobody until no window covers it.
    in_maintenance: bool
    created_at: datetime
    acknowledged_at: datetime | None
    resolved_at: datetime | None
    labels: dict[str, str]
    acknowledged_by: ActorOut | None
    resolved_by: ActorOut | None
    # Where it is told: the matched routes and their destinations (Slack
    # channels, names of the variables holding PagerDuty routing keys, e-mail
    # recipients; empty lists mean the defaults), or null before it was routed.
    route: dict[str, Any] | None = None
    # The first alerts and timeline entries (all of them for most incidents);
    # a ``*_next_cursor`` says there are more, read through the paged routes.
    alerts: list[AlertOut]
    alerts_total: int
    alerts_next_cursor: str | None
    # New fingerprints past the per-incident cap: counted, not stored.
    alerts_dropped: int
    timeline: list[TimelineEntryOut]
    timeline_total: int
    timeline_next_cursor: str | None
    remediations: list[RemediationOut] = Field(default_factory=list)
    notifications: list[NotificationOut] = Field(default_factory=list)
    silences: list[SilenceOut] = Field(default_factory=list)

    @classmethod
    def of(cls, shown: Shown) -> IncidentOut:
        incident = shown.incident
        fields = {name: getattr(incident, name) for name in _FROM_ROW}
        fields.update(
            alerts=shown.alerts.items,
            alerts_total=shown.alerts.total,
            alerts_next_cursor=shown.alerts.next_cursor,
            timeline=shown.timeline.items,
            timeline_total=shown.timeline.total,
            timeline_next_cursor=shown.timeline.next_cursor,
        )
        return cls.model_validate(fields, from_attributes=True)


# Read from the incident row itself (and the relationships the caller loaded).
_FROM_ROW = (
    "id", "key", "title", "summary", "severity", "status", "flapping", "in_maintenance", "created_at",
    "acknowledged_at", "resolved_at", "acknowledged_by", "resolved_by", "route", "labels", "alerts_dropped", "remediations",
    "notifications", "silences",
)


class IncidentPage(BaseModel):
    items: list[IncidentOut]
    next_cursor: str | None


class AlertPage(BaseModel):
    items: list[AlertOut]
    next_cursor: str | None


class TimelinePage(BaseModel):
    items: list[TimelineEntryOut]
    next_cursor: str | None


class TransitionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: Text | None = Field(default=None, max_length=10_000)
