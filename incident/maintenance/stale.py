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

from incident import keys
from incident.db import session_scope
from incident.incidents.events import EventBus
from incident.incidents.lifecycle import STALE, Lifecycle
from incident.incidents.models import AlertGroup, Incident, IncidentStatus
from incident.rules import Rules
from incident.rules.durations import format_duration

log = structlog.get_logger(__name__)

BATCH = 200


def resolve_stale(
    rules: Rules, events: EventBus, client: redis.Redis, *, now: datetime | None = None,
    batch: int = BATCH,
) -> list[int]:
    """Resolve stale incidents; returns their ids."""
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
        return []
    heard = client.hmget(keys.GROUP_LAST_SEEN, [row.group_hash for row in candidates])
    resolved: list[int] = []
    for row, seen in zip(candidates, heard, strict=True):
        if seen is not None and datetime.fromtimestamp(int(seen), UTC) >= cutoff:
            continue
        if _resolve_one(row.id, events, cutoff, stale_after, now):
            resolved.append(row.id)
    if resolved:
        log.info("resolved stale incidents", count=len(resolved), stale_after=format_duration(stale_after))
    return resolved


def _resolve_one(
    incident_id: int, events: EventBus, cutoff: datetime, stale_after: timedelta, now: datetime,
) -> bool:
    with session_scope() as session:
        # The group first, as a worker applying a notification takes them.
        group_id = session.scalar(select(Incident.group_id).where(Incident.id == incident_id))
        if group_id is None:
            return False
        session.get(AlertGroup, group_id, with_for_update=True)
        incident = session.get(Incident, incident_id, with_for_update=True, populate_existing=True)
        if incident.status == IncidentStatus.RESOLVED or incident.updated_at >= cutoff:
            return False  # a webhook got there first
        with Lifecycle(session, events=events, now=now) as life:
            life.resolve(incident, STALE, stale_after=format_duration(stale_after))
        return True
