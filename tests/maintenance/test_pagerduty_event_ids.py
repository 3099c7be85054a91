"""The hourly retention job forgets applied PagerDuty event ids once no redelivery can come."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from incident.db import session_scope
from incident.incidents.models import Incident
from incident.maintenance.retention import purge_resolved
from incident.notifications.models import PagerDutyEvent
from incident.notifications.pagerduty_events import EVENT_IDS_KEPT, Outcome, apply_event
from tests.fakes.pagerduty import incident_data, webhook
from tests.maintenance.test_retention_and_stale import open_incident


def event_ids() -> set[str]:
    with session_scope() as session:
        return set(session.scalars(select(PagerDutyEvent.event_id)))


def test_old_event_ids_are_purged_and_recent_ones_still_refuse_redeliveries(
    clean_state, redis_client
):
    incident_id = open_incident(redis_client, "pd-retention")
    with session_scope() as session:
        key = session.get(Incident, incident_id).key
    now = datetime.now(UTC)
    old = webhook("incident.escalated", incident_data(key), event_id="OLD")["event"]
    recent = webhook("incident.reassigned", incident_data(key), event_id="RECENT")["event"]
    assert apply_event(old, now=now - EVENT_IDS_KEPT - timedelta(hours=1)) is Outcome.APPLIED
    assert apply_event(recent, now=now - timedelta(hours=1)) is Outcome.APPLIED

    report = purge_resolved(timedelta(days=90), now=now)

    assert report.pagerduty_event_ids == 1
    assert event_ids() == {"RECENT"}
    assert apply_event(recent, now=now) is Outcome.DUPLICATE
