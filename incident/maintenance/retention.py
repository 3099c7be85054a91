"""Purging resolved incidents older than ``retention``, in small batches.

Each batch is its own short transaction that takes the incidents it deletes
with ``FOR UPDATE SKIP LOCKED``: a worker busy with one of them (a late
notification, a reopening) is never waited for, and it is never left waiting
long behind the purge. Children are deleted explicitly, table by table, so
the log can say what went.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

import redis
import structlog
from sqlalchemy import delete, exists, select

from incident.db import session_scope
from incident import keys
from incident.incidents.repeats import repeat_key
from incident.incidents.models import Alert, AlertGroup, Incident, IncidentStatus, TimelineEntry
from incident.incidents.outbox import OutboxMessage
from incident.notifications.models import EscalationTimer, Notification, PagerDutyEvent
from incident.notifications.pagerduty_events import EVENT_IDS_KEPT
from incident.remediation.models import RemediationRun

log = structlog.get_logger(__name__)

BATCH = 500
OUTBOX_KEPT = timedelta(days=1)
_CHILDREN = (
    ("timeline_entries", TimelineEntry),
    ("alerts", Alert),
    ("notifications", Notification),
    ("escalation_timers", EscalationTimer),
    ("remediation_runs", RemediationRun),
    ("pagerduty_events", PagerDutyEvent),
)


@dataclass
class PurgeReport:
    incidents: int = 0
    groups: int = 0
    batches: int = 0
    outbox: int = 0
    pagerduty_event_ids: int = 0
    children: dict[str, int] = field(default_factory=lambda: {name: 0 for name, _ in _CHILDREN})

    def as_log(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "children"}, **self.children}


def purge_resolved(
    retention: timedelta, *, now: datetime, client: redis.Redis | None = None, batch: int = BATCH
) -> PurgeReport:
    """Delete incidents resolved before ``now - retention``, then groups left empty."""
    cutoff = now - retention
    report = PurgeReport()
    while _purge_batch(cutoff, batch, report):
        pass
    while hashes := _purge_empty_groups(cutoff, batch, report):
        if client is not None:
            _forget_groups(client, hashes)
    report.outbox = _purge_relayed(now - OUTBOX_KEPT)
    report.pagerduty_event_ids = _purge_event_ids(now - EVENT_IDS_KEPT)
    log.info("purged resolved incidents", retention=str(retention), **report.as_log())
    return report


def _purge_relayed(before: datetime) -> int:
    """Outbox messages the broker took: kept a while to look back on, then dropped."""
    with session_scope() as session:
        return session.execute(
            delete(OutboxMessage).where(OutboxMessage.relayed_at < before)
        ).rowcount


def _purge_event_ids(before: datetime) -> int:
    """PagerDuty event ids kept to refuse redeliveries: long past any retry now."""
    with session_scope() as session:
        return session.execute(
            delete(PagerDutyEvent).where(PagerDutyEvent.received_at < before)
        ).rowcount


def _purge_batch(cutoff: datetime, batch: int, report: PurgeReport) -> bool:
    with session_scope() as session:
        ids = session.scalars(
            select(Incident.id)
            .where(Incident.status == IncidentStatus.RESOLVED, Incident.resolved_at < cutoff)
            .order_by(Incident.id)
            .limit(batch)
            .with_for_update(skip_locked=True)
        ).all()
        if not ids:
            return False
        for name, model in _CHILDREN:
            result = session.execute(delete(model).where(model.incident_id.in_(ids)))
            report.children[name] += result.rowcount
        session.execute(delete(Incident).where(Incident.id.in_(ids)))
    report.incidents += len(ids)
    report.batches += 1
    return True


def _purge_empty_groups(cutoff: datetime, batch: int, report: PurgeReport) -> list[str]:
    """Groups with no incident left and nothing heard since the cutoff."""
    with session_scope() as session:
        rows = session.execute(
            select(AlertGroup.id, AlertGroup.group_hash)
            .where(
                AlertGroup.created_at < cutoff,
                ~exists().where(Incident.group_id == AlertGroup.id),
            )
            .limit(batch)
            .with_for_update(skip_locked=True, of=AlertGroup)
        ).all()
        if not rows:
            return []
        session.execute(delete(AlertGroup).where(AlertGroup.id.in_([row.id for row in rows])))
    report.groups += len(rows)
    return [row.group_hash for row in rows]


def _forget_groups(client: redis.Redis, hashes: list[str]) -> None:
    try:
        pipe = client.pipeline(transaction=False)
        pipe.hdel(keys.GROUP_LAST_SEEN, *hashes)
        pipe.delete(*(repeat_key(each) for each in hashes))
        pipe.execute()
    except redis.RedisError as exc:
        # Only cache entries: they expire on their own.
        log.warning("could not drop purged groups from the cache", error=str(exc))
