"""Reading incidents, and the transitions people make by hand."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.interfaces import LoaderOption

from incident.incidents.events import NO_SUBSCRIBERS, EventBus
from incident.incidents.lifecycle import Actor, Lifecycle, TransitionNotAllowed
from incident.incidents.models import Alert, Incident, TimelineEntry, TimelineKind

__all__ = ["BadCursor", "IncidentNotFound", "TransitionNotAllowed"]

# An incident's alerts and timeline entries, shown with it, are cut at these
# many (oldest first); the rest are read page by page.
SHOWN_DEFAULT = 100
SHOWN_MAX = 1_000


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


@dataclass(frozen=True)
class Part:
    """The first rows of an incident's alerts or timeline, how many there are in
    all, and where the next page starts (None: these are all)."""

    items: Sequence[Alert] | Sequence[TimelineEntry] = field(default_factory=list)
    total: int = 0
    next_cursor: str | None = None


@dataclass(frozen=True)
class Shown:
    """An incident as the API shows it: the row, and the first of its alerts and timeline."""

    incident: Incident
    alerts: Part
    timeline: Part


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
    query = select(Incident).options(*options).order_by(Incident.id.desc()).limit(limit + 1)
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
    incident = session.get(Incident, incident_id, options=options)
    if incident is None:
        raise IncidentNotFound(incident_id)
    return incident


def shown(
    session: Session, incidents: Sequence[Incident], *,
    alerts_limit: int = SHOWN_DEFAULT, timeline_limit: int = SHOWN_DEFAULT,
) -> list[Shown]:
    """Each incident with its first alerts and timeline entries: two queries for
    them all, however many rows each incident has."""
    ids = [incident.id for incident in incidents]
    alerts = _first_rows(session, Alert, ids, alerts_limit)
    timeline = _first_rows(session, TimelineEntry, ids, timeline_limit)
    return [Shown(i, alerts.get(i.id, Part()), timeline.get(i.id, Part())) for i in incidents]


def _first_rows(
    session: Session, model: type[Alert] | type[TimelineEntry], ids: list[int], limit: int
) -> dict[int, Part]:
    if not ids:
        return {}
    ranked = select(
        model.id,
        func.row_number().over(partition_by=model.incident_id, order_by=model.id).label("n"),
        func.count().over(partition_by=model.incident_id).label("total"),
    ).where(model.incident_id.in_(ids)).subquery()
    rows = session.execute(
        select(model, ranked.c.total)
        .join(ranked, model.id == ranked.c.id)
        .where(ranked.c.n <= limit)
        .order_by(model.id)
    ).all()
    grouped: dict[int, tuple[list, int]] = {}
    for row, total in rows:
        grouped.setdefault(row.incident_id, ([], total))[0].append(row)
    return {
        incident_id: Part(items, total, encode_cursor(items[-1].id) if total > len(items) else None)
        for incident_id, (items, total) in grouped.items()
    }


def alert_page(
    session: Session, incident_id: int, *, limit: int, cursor: str | None = None
) -> tuple[Sequence[Alert], str | None]:
    """One incident's alerts, oldest first, ``limit`` at a time."""
    return _page(session, Alert, incident_id, limit, cursor)


def timeline_page(
    session: Session, incident_id: int, *, limit: int, cursor: str | None = None
) -> tuple[Sequence[TimelineEntry], str | None]:
    """One incident's timeline, oldest first, ``limit`` entries at a time."""
    return _page(session, TimelineEntry, incident_id, limit, cursor)


def _page(
    session: Session, model: type[Alert] | type[TimelineEntry], incident_id: int, limit: int,
    cursor: str | None,
) -> tuple[Sequence, str | None]:
    after = decode_cursor(cursor) if cursor else 0
    if session.scalar(select(Incident.id).where(Incident.id == incident_id)) is None:
        raise IncidentNotFound(incident_id)
    rows = session.scalars(
        select(model)
        .where(model.incident_id == incident_id, model.id > after)
        .order_by(model.id)
        .limit(limit + 1)
    ).all()
    if len(rows) > limit:
        return rows[:limit], encode_cursor(rows[limit - 1].id)
    return rows, None


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
