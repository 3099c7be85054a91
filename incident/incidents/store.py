"""Reading incidents, and the transitions people make by hand."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload
from sqlalchemy.orm.interfaces import LoaderOption

from incident.incidents.events import NO_SUBSCRIBERS, EventBus
from incident.incidents.lifecycle import Actor, Lifecycle, TransitionNotAllowed
from incident.incidents.models import Incident, TimelineKind

__all__ = ["BadCursor", "IncidentNotFound", "TransitionNotAllowed"]


class IncidentNotFound(LookupError):
    pass


class BadCursor(ValueError):
    pass


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, value = raw.partition(":")
        if kind != "id":
            raise ValueError(kind)
        return int(value)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise BadCursor("cursor is not one this API returned") from exc


_WHOLE = (selectinload(Incident.alerts), selectinload(Incident.timeline))


def list_incidents(
    session: Session,
    *,
    status: str | None = None,
    severity: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
    options: Sequence[LoaderOption] = (),
) -> tuple[Sequence[Incident], str | None]:
    """Newest first; ids grow with creation time, so the id is the cursor.

    ``options``: what else to load with each (the API adds notifications and remediations).
    """
    query = (
        select(Incident).options(*_WHOLE, *options).order_by(Incident.id.desc()).limit(limit + 1)
    )
    if status:
        query = query.where(Incident.status == status)
    if severity:
        query = query.where(Incident.severity == severity)
    if cursor:
        query = query.where(Incident.id < decode_cursor(cursor))
    rows = session.scalars(query).all()
    if len(rows) > limit:
        return rows[:limit], encode_cursor(rows[limit - 1].id)
    return rows, None


def get_incident(
    session: Session, incident_id: int, *, options: Sequence[LoaderOption] = ()
) -> Incident:
    incident = session.get(Incident, incident_id, options=(*_WHOLE, *options))
    if incident is None:
        raise IncidentNotFound(incident_id)
    return incident


_BY_HAND = {
    TimelineKind.ACKNOWLEDGED: Lifecycle.acknowledge,
    TimelineKind.UNACKNOWLEDGED: Lifecycle.unacknowledge,
    TimelineKind.RESOLVED: Lifecycle.resolve,
}


def transition_by_hand(
    session: Session,
    incident_id: int,
    to: TimelineKind,
    actor: Actor,
    *,
    note: str | None = None,
    now: datetime | None = None,
    events: EventBus = NO_SUBSCRIBERS,
) -> Incident:
    """Acknowledge, unacknowledge or resolve; the row lock orders this against the worker."""
    incident = session.get(Incident, incident_id, with_for_update=True)
    if incident is None:
        raise IncidentNotFound(incident_id)
    with Lifecycle(session, events=events, now=now) as life:
        _BY_HAND[to](life, incident, actor, note=note)
    return incident
