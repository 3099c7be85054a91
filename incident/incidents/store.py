"""Reading incidents, and the transitions people make by hand."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from incident.incidents.models import Incident, IncidentStatus, TimelineEntry, TimelineKind
from incident.notifications.ledger import record_notifications
from incident.notifications.planning import Channels
from incident.rules import Rules


class IncidentNotFound(LookupError):
    pass


class TransitionNotAllowed(RuntimeError):
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


_WHOLE = (
    selectinload(Incident.alerts),
    selectinload(Incident.timeline),
    selectinload(Incident.notifications),
    selectinload(Incident.remediations),
)


def list_incidents(
    session: Session,
    *,
    status: str | None = None,
    severity: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[Sequence[Incident], str | None]:
    """Newest first; ids grow with creation time, so the id is the cursor."""
    query = select(Incident).options(*_WHOLE).order_by(Incident.id.desc()).limit(limit + 1)
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


def get_incident(session: Session, incident_id: int) -> Incident:
    incident = session.get(Incident, incident_id, options=_WHOLE)
    if incident is None:
        raise IncidentNotFound(incident_id)
    return incident


_VERB = {TimelineKind.ACKNOWLEDGED: "acknowledge", TimelineKind.RESOLVED: "resolve"}
_ALLOWED_FROM = {
    TimelineKind.ACKNOWLEDGED: {IncidentStatus.TRIGGERED},
    TimelineKind.RESOLVED: {IncidentStatus.TRIGGERED, IncidentStatus.ACKNOWLEDGED},
}


def transition_by_hand(
    session: Session,
    incident_id: int,
    to: TimelineKind,
    *,
    note: str | None = None,
    now: datetime | None = None,
    rules: Rules | None = None,
    channels: Channels | None = None,
) -> tuple[Incident, list[tuple[int, bool]]]:
    """Acknowledge or resolve; the row lock orders this against the worker.

    Returns the incident and the ledger rows to hand to workers after commit.
    """
    now = now or datetime.now(UTC)
    incident = session.get(Incident, incident_id, with_for_update=True)
    if incident is None:
        raise IncidentNotFound(incident_id)
    if incident.status not in _ALLOWED_FROM[to]:
        raise TransitionNotAllowed(
            f"incident {incident_id} is {incident.status}; it cannot {_VERB[to]}"
        )
    if to is TimelineKind.ACKNOWLEDGED:
        incident.status = IncidentStatus.ACKNOWLEDGED
        incident.acknowledged_at = now
    else:
        incident.status = IncidentStatus.RESOLVED
        incident.resolved_at = now
    incident.updated_at = now
    detail: dict[str, str] = {"by": "api"}
    if note:
        detail["note"] = note
    entry = TimelineEntry(incident_id=incident.id, at=now, kind=to, detail=detail)
    session.add(entry)
    session.flush()
    created = []
    if rules is not None and channels is not None:
        created = record_notifications(session, incident, [entry], rules, channels, now)
    session.expire(incident)
    return get_incident(session, incident_id), created
