"""Retention and stale incidents on real PostgreSQL and Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update

from incident import keys
from incident.db import session_scope
from incident.incidents.events import EventBus
from incident.incidents.ingest import ingest_payload
from incident.incidents.models import (
    Alert,
    AlertGroup,
    Incident,
    TimelineEntry,
)
from incident.incidents.repeats import RepeatCache
from incident.maintenance.retention import purge_resolved
from incident.maintenance.stale import resolve_stale
from incident.notifications.ledger import NotificationPlanner
from incident.notifications.models import Notification
from incident.notifications.planning import Channels
from incident.remediation.engine import RemediationScheduler
from incident.remediation.models import RemediationRun
from incident.rules import parse_rules
from tests import factories

CONSOLE = Channels(slack=False, slack_default_channel=None, pagerduty=False)
RULES = parse_rules("""
maintenance: {retention: 30d, stale_after: 1h}
remediations:
  - name: restart
    matchers: ['alertname="HighErrorRate"']
    action: command
    with: {argv: ["true"]}
""")
EVENTS = EventBus(
    NotificationPlanner(RULES, CONSOLE), RemediationScheduler(RULES, "http://127.0.0.1:8080")
)


def open_incident(redis_client, service: str) -> int:
    change = ingest_payload(
        factories.payload(factories.alert(service=service)),
        rules=RULES,
        repeats=RepeatCache(redis_client),
        events=EVENTS,
    )
    return change.incident_id


def resolve(redis_client, service: str) -> None:
    ingest_payload(
        factories.payload(factories.alert("resolved", service=service)),
        rules=RULES,
        repeats=RepeatCache(redis_client),
        events=EVENTS,
    )


def age(incident_id: int, *, resolved_days_ago: float | None = None, idle: timedelta | None = None):
    """Move an incident's clock back, as if time had passed."""
    values: dict = {}
    if resolved_days_ago is not None:
        values["resolved_at"] = datetime.now(UTC) - timedelta(days=resolved_days_ago)
    if idle is not None:
        values["updated_at"] = datetime.now(UTC) - idle
    with session_scope() as session:
        session.execute(update(Incident).where(Incident.id == incident_id).values(**values))
        session.execute(
            update(AlertGroup).values(created_at=datetime.now(UTC) - timedelta(days=400))
        )


def count(model, **where) -> int:
    with session_scope() as session:
        query = select(func.count()).select_from(model)
        for name, value in where.items():
            query = query.where(getattr(model, name) == value)
        return session.scalar(query)


def notification_ids() -> set[int]:
    with session_scope() as session:
        return set(session.scalars(select(Notification.id)))


def test_purge_removes_old_resolved_incidents_with_everything_hanging_off_them_and_nothing_else(
    clean_state, redis_client
):
    old = open_incident(redis_client, "old")
    resolve(redis_client, "old")
    recent = open_incident(redis_client, "recent")
    resolve(redis_client, "recent")
    firing = open_incident(redis_client, "firing")
    age(old, resolved_days_ago=31)
    age(recent, resolved_days_ago=29)
    # An open incident is never purged, however old.
    age(firing, idle=timedelta(days=365))
    assert count(RemediationRun, incident_id=old) == 1
    assert count(Notification, incident_id=old) > 0

    report = purge_resolved(timedelta(days=30), now=datetime.now(UTC), client=redis_client, batch=1)

    assert report.incidents == 1
    assert report.children["timeline_entries"] >= 2
    assert report.children["alerts"] == 1
    assert report.children["remediation_runs"] == 1
    assert report.groups == 1
    with session_scope() as session:
        assert sorted(session.scalars(select(Incident.id))) == [recent, firing]
    for model in (Alert, TimelineEntry, Notification, RemediationRun):
        assert count(model, incident_id=old) == 0
        assert count(model, incident_id=recent) > 0
    assert count(AlertGroup) == 2
    assert len(redis_client.hkeys(keys.GROUP_LAST_SEEN)) == 2


def test_purge_works_in_batches_and_skips_incidents_a_worker_holds(clean_state, redis_client):
    ids = []
    for n in range(5):
        ids.append(open_incident(redis_client, f"svc-{n}"))
        resolve(redis_client, f"svc-{n}")
        age(ids[-1], resolved_days_ago=40)
    with session_scope() as holder:
        # A worker applying a late notification to one of them holds its row.
        holder.get(Incident, ids[0], with_for_update=True)
        report = purge_resolved(timedelta(days=30), now=datetime.now(UTC), batch=2)
        assert (report.incidents, report.batches) == (4, 2)
    report = purge_resolved(timedelta(days=30), now=datetime.now(UTC), batch=2)
    assert report.incidents == 1
    assert count(Incident) == 0


def test_a_group_alertmanager_stopped_sending_is_resolved_as_stale_and_announced(
    clean_state, redis_client
):
    stale = open_incident(redis_client, "gone")
    heard = open_incident(redis_client, "still-sent")
    fresh = open_incident(redis_client, "new")
    age(stale, idle=timedelta(hours=2))
    age(heard, idle=timedelta(hours=2))
    redis_client.hset(keys.GROUP_LAST_SEEN, "ignored", 0)
    # Unchanged re-sends never reach PostgreSQL; the receiver's record in Redis counts.
    ingest_payload(
        factories.payload(factories.alert(service="still-sent")),
        rules=RULES,
        repeats=RepeatCache(redis_client),
        events=EVENTS,
    )
    with session_scope() as session:
        gone_hash = session.scalar(
            select(AlertGroup.group_hash).join(Incident).where(Incident.id == stale)
        )
    redis_client.hset(
        keys.GROUP_LAST_SEEN, gone_hash, int((datetime.now(UTC) - timedelta(hours=2)).timestamp())
    )

    before = notification_ids()
    resolved = resolve_stale(RULES, EVENTS, redis_client)
    created = sorted(notification_ids() - before)

    assert resolved == [stale]
    assert len(created) == 1
    with session_scope() as session:
        shown = {i.id: i for i in session.scalars(select(Incident))}
        assert shown[stale].status == "resolved"
        assert shown[heard].status == "triggered"
        assert shown[fresh].status == "triggered"
        entry = session.scalars(
            select(TimelineEntry)
            .where(TimelineEntry.incident_id == stale)
            .order_by(TimelineEntry.id.desc())
        ).first()
        assert (entry.kind, entry.detail) == ("resolved", {"by": "stale", "stale_after": "1h"})
        (text,) = session.scalars(select(Notification.text).where(Notification.id == created[0]))
        assert text == "Resolved (stale: not re-sent by Alertmanager for 1h)"
    before = notification_ids()
    assert resolve_stale(RULES, EVENTS, redis_client) == []
    assert notification_ids() == before
