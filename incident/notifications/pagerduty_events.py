"""PagerDuty back to us: V3 webhook events applied to our incidents.

An event names our incident by ``event.data.incident_key`` (the ``dedup_key``
we paged with, our incident's ``key``); a note (``incident.annotated``) names
only PagerDuty's incident, which an earlier event for it told us is ours.
Acknowledging, unacknowledging and resolving go through the lifecycle as any
transition does, by ``Actor(PAGERDUTY, agent id, agent summary)``; escalations,
reassignments, delegations and notes become ``note`` entries. Each event id
is applied once: its row is inserted in the same transaction as the change,
so a redelivery, even a concurrent one, finds it and changes nothing.

PagerDuty sends an incident's events in order, but workers apply them in
parallel: a transition older (``occurred_at``) than one already seen for the
incident is recorded and skipped, so an acknowledgement overtaken by its
unacknowledgement cannot win.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from enum import StrEnum

import structlog
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import exists, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from incident.alerts.schemas import Text, Timestamp
from incident.db import session_scope
from incident.incidents.events import NO_SUBSCRIBERS, EventBus
from incident.incidents.lifecycle import PAGERDUTY, Actor, Lifecycle, TransitionNotAllowed
from incident.incidents.models import Incident
from incident.notifications.models import PagerDutyEvent

APPLY_TASK = "incident.notifications.apply_pagerduty_event"

log = structlog.get_logger(__name__)

# How long applied event ids are kept: PagerDuty stops retrying a delivery
# within hours, so a week is far beyond any redelivery.
EVENT_IDS_KEPT = timedelta(days=7)


class EventType(StrEnum):
    TRIGGERED = "incident.triggered"
    ACKNOWLEDGED = "incident.acknowledged"
    UNACKNOWLEDGED = "incident.unacknowledged"
    RESOLVED = "incident.resolved"
    ESCALATED = "incident.escalated"
    REASSIGNED = "incident.reassigned"
    DELEGATED = "incident.delegated"
    ANNOTATED = "incident.annotated"


# What a webhook subscription asks PagerDuty for. A triggered event changes
# nothing here (we paged it), but tells which PagerDuty incident is ours.
SUBSCRIBED = tuple(EventType)


class _Lenient(BaseModel):
    # PagerDuty adds fields over time; only what is read here is checked.
    model_config = ConfigDict(extra="ignore")


class Reference(_Lenient):
    id: Text | None = Field(default=None, max_length=255)
    summary: Text | None = Field(default=None, max_length=1024)
    type: Text | None = Field(default=None, max_length=255)


class EventData(_Lenient):
    id: Text | None = Field(default=None, max_length=255)
    type: Text | None = Field(default=None, max_length=255)
    incident_key: Text | None = Field(default=None, max_length=255)
    # An incident_note's incident, and its text.
    incident: Reference | None = None
    content: Text | None = Field(default=None, max_length=65_536)
    assignees: list[Reference] = Field(default_factory=list, max_length=100)
    escalation_policy: Reference | None = None


class Head(_Lenient):
    """What every event has, whatever its type."""

    id: Text = Field(min_length=1, max_length=255)
    event_type: Text = Field(min_length=1, max_length=255)

    @property
    def handled(self) -> bool:
        return self.event_type in SUBSCRIBED

    def summary(self) -> dict[str, str]:
        """What may be shown of it (logs, Flower): never its content."""
        return {"event_id": self.id, "event_type": self.event_type}


class Event(Head):
    resource_type: Text | None = Field(default=None, max_length=255)
    occurred_at: Timestamp | None = None
    agent: Reference | None = None
    data: EventData | None = None

    @property
    def pagerduty_incident_id(self) -> str | None:
        if self.data is None:
            return None
        if self.data.type == "incident":
            return self.data.id
        return self.data.incident.id if self.data.incident else None

    @property
    def actor(self) -> Actor:
        agent = self.agent or Reference()
        return Actor(PAGERDUTY, agent.id, agent.summary)


class Envelope(_Lenient):
    """A V3 webhook's body, read only as far as the event's id and type: events we
    do not act on are not held to the shape of those we do."""

    event: Head


class Webhook(_Lenient):
    """A V3 webhook's body: one event, of a type we act on."""

    event: Event


class Outcome(StrEnum):
    APPLIED = "applied"
    UNCHANGED = "unchanged"  # the transition is not allowed now (already acknowledged…)
    DUPLICATE = "duplicate"
    OVERTAKEN = "overtaken"  # a later transition of the incident was seen first
    UNKNOWN_INCIDENT = "unknown_incident"
    IGNORED = "ignored"  # a type we do not act on


def apply_event(
    raw: dict, *, events: EventBus = NO_SUBSCRIBERS, now: datetime | None = None
) -> Outcome:
    """Apply one event (as the receiver queued it) in its own transaction."""
    event = Event.model_validate(raw)
    structlog.contextvars.bind_contextvars(**event.summary())
    with session_scope() as session:
        outcome = apply(session, event, events=events, now=now)
    log.info("pagerduty event", outcome=outcome.value)
    return outcome


def apply(
    session: Session, event: Event, *, events: EventBus = NO_SUBSCRIBERS,
    now: datetime | None = None,
) -> Outcome:
    if not event.handled:
        return Outcome.IGNORED
    incident = _our_incident(session, event)
    if incident is None:
        return Outcome.UNKNOWN_INCIDENT
    with Lifecycle(session, events=events, now=now) as life:
        if not _first_delivery(session, event, incident, life.now):
            return Outcome.DUPLICATE
        change = _CHANGES.get(EventType(event.event_type))
        if change is None:
            return Outcome.APPLIED
        if _overtaken(session, event, incident):
            return Outcome.OVERTAKEN
        try:
            change(life, incident, event)
        except TransitionNotAllowed as exc:
            log.info("pagerduty event changes nothing", reason=str(exc))
            return Outcome.UNCHANGED
    return Outcome.APPLIED


def _our_incident(session: Session, event: Event) -> Incident | None:
    """The incident the event is about, locked as every transition locks it."""
    key = event.data.incident_key if event.data else None
    if key:
        query = select(Incident).where(Incident.key == key)
    elif (pagerduty_id := event.pagerduty_incident_id) is not None:
        known = (
            select(PagerDutyEvent.incident_id)
            .where(PagerDutyEvent.pagerduty_incident_id == pagerduty_id)
            .limit(1)
            .scalar_subquery()
        )
        query = select(Incident).where(Incident.id == known)
    else:
        return None
    return session.scalars(
        query.with_for_update(), execution_options={"populate_existing": True}
    ).one_or_none()


def _first_delivery(session: Session, event: Event, incident: Incident, now: datetime) -> bool:
    inserted = session.scalar(
        insert(PagerDutyEvent)
        .values(
            event_id=event.id,
            event_type=event.event_type,
            pagerduty_incident_id=event.pagerduty_incident_id,
            incident_id=incident.id,
            occurred_at=event.occurred_at,
            received_at=now,
        )
        .on_conflict_do_nothing(index_elements=["event_id"])
        .returning(PagerDutyEvent.event_id)
    )
    return inserted is not None


_TRANSITIONS = (EventType.ACKNOWLEDGED, EventType.UNACKNOWLEDGED, EventType.RESOLVED)


def _overtaken(session: Session, event: Event, incident: Incident) -> bool:
    """Whether a transition PagerDuty made after this one was already seen."""
    if event.event_type not in _TRANSITIONS or event.occurred_at is None:
        return False
    return bool(session.scalar(select(exists().where(
        PagerDutyEvent.incident_id == incident.id,
        PagerDutyEvent.event_type.in_([str(kind) for kind in _TRANSITIONS]),
        PagerDutyEvent.occurred_at > event.occurred_at,
    ))))


def note_text(event: Event) -> str:
    """The note an escalation, reassignment, delegation or annotation becomes."""
    data = event.data or EventData()
    assignees = ", ".join(a.summary or a.id or "?" for a in data.assignees) or "nobody"
    policy = data.escalation_policy
    policy_name = (policy.summary or policy.id) if policy else None
    match EventType(event.event_type):
        case EventType.ESCALATED:
            on = f" on {policy_name}" if policy_name else ""
            return f"Escalated in PagerDuty{on}; assigned to {assignees}"
        case EventType.REASSIGNED:
            return f"Reassigned in PagerDuty to {assignees}"
        case EventType.DELEGATED:
            to = policy_name or "another escalation policy"
            return f"Delegated in PagerDuty to {to}; assigned to {assignees}"
        case _:
            return data.content or "(an empty note)"


def _note(life: Lifecycle, incident: Incident, event: Event) -> None:
    life.note(incident, event.actor, note_text(event))


_CHANGES: dict[EventType, Callable[[Lifecycle, Incident, Event], object]] = {
    EventType.ACKNOWLEDGED: lambda life, incident, event: life.acknowledge(incident, event.actor),
    EventType.UNACKNOWLEDGED: lambda life, incident, event: life.unacknowledge(incident, event.actor),
    EventType.RESOLVED: lambda life, incident, event: life.resolve(incident, event.actor),
    EventType.ESCALATED: _note,
    EventType.REASSIGNED: _note,
    EventType.DELEGATED: _note,
    EventType.ANNOTATED: _note,
}
