"""Resolving incidents whose group Alertmanager has stopped re-sending.

Alertmanager repeats a firing group every ``repeat_interval``; when it stops
(a silence added then the alert deleted, Alertmanager's state lost, a
resolution that never arrived), the incident would stay open forever.
An unchanged re-send never reaches PostgreSQL (the digest cache answers it),
so "last heard" is the newer of the incident's last change and the group's
last arrival that every receiver records in Redis.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import redis
import structlog
from sqlalchemy import select

from incident.db import session_scope
from incident.incidents.digests import LAST_SEEN_KEY
from incident.incidents.models import (
    AlertGroup,
    Incident,
    IncidentStatus,
    TimelineEntry,
    TimelineKind,
)
from incident.notifications.ledger import record_notifications
from incident.notifications.planning import Channels
from incident.rules import Rules
from incident.rules.durations import format_duration

log = structlog.get_logger(__name__)

BATCH = 200


def resolve_stale(
    rules: Rules, channels: Channels, client: redis.Redis, *, now: datetime | None = None,
    batch: int = BATCH,
) -> tuple[list[int], list[tuple[int, bool]]]:
    """Resolve stale incidents; returns their ids and the ledger rows to deliver."""
    now = now or datetime.now(UTC)
    stale_after = rules.maintenance.stale_after
    cutoff = now - stale_after
    with session_scope() as session:
        candidates = session.execute(
            select(Incident.id, AlertGroup.group_hash)
            .join(AlertGroup, AlertGroup.id == Incident.group_id)
            .where(Incident.status != IncidentStatus.RESOLVED, Incident.updated_at < cutoff)
            .order_by(Incident.id)
            .limit(batch)
        ).all()
    if not candidates:
        return [], []
    heard = client.hmget(LAST_SEEN_KEY, [row.group_hash for row in candidates])
    resolved: list[int] = []
    created: list[tuple[int, bool]] = []
    for row, seen in zip(candidates, heard, strict=True):
        if seen is not None and datetime.fromtimestamp(int(seen), UTC) >= cutoff:
            continue
        rows = _resolve_one(row.id, rules, channels, cutoff, stale_after, now)
        if rows is not None:
            resolved.append(row.id)
            created += rows
    if resolved:
        log.info("resolved stale incidents", count=len(resolved), stale_after=format_duration(stale_after))
    return resolved, created


def _resolve_one(
    incident_id: int, rules: Rules, channels: Channels, cutoff: datetime,
    stale_after: timedelta, now: datetime,
) -> list[tuple[int, bool]] | None:
    with session_scope() as session:
        # The group first, as a worker applying a notification takes them.
        group_id = session.scalar(select(Incident.group_id).where(Incident.id == incident_id))
        if group_id is None:
            return None
        session.get(AlertGroup, group_id, with_for_update=True)
        incident = session.get(Incident, incident_id, with_for_update=True, populate_existing=True)
        if incident.status == IncidentStatus.RESOLVED or incident.updated_at >= cutoff:
            return None  # a notification got there first
        incident.status = IncidentStatus.RESOLVED
        incident.resolved_at = now
        incident.updated_at = now
        entry = TimelineEntry(
            incident_id=incident.id, at=now, kind=TimelineKind.RESOLVED,
            detail={"by": "stale", "stale_after": format_duration(stale_after)},
        )
        session.add(entry)
        session.flush()
        return record_notifications(session, incident, [entry], rules, channels, now)
