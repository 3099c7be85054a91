"""PagerDuty's events applied in-process, in the order a busy worker pool may take them."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from incident.db import session_scope
from incident.incidents.ingest import ingest_payload
from incident.incidents.models import Incident
from incident.incidents.repeats import RepeatCache
from incident.notifications.pagerduty_events import Outcome, apply_event
from incident.rules import load_rules
from tests.factories import alert, payload
from tests.fakes.pagerduty import incident_data, webhook


@pytest.fixture
def incident_key(clean_state, redis_client) -> str:
    change = ingest_payload(payload(alert(instance="pd-order")), rules=load_rules(None),
                            repeats=RepeatCache(redis_client))
    with session_scope() as session:
        return session.get(Incident, change.incident_id).key


def event(kind: str, key: str, at: str) -> dict:
    body = webhook(kind, incident_data(key))["event"]
    body["occurred_at"] = at
    return body


def status(key: str) -> str:
    with session_scope() as session:
        return session.scalars(select(Incident.status).where(Incident.key == key)).one()


def test_an_acknowledgement_overtaken_by_its_unacknowledgement_does_not_win(incident_key):
    ack = event("incident.acknowledged", incident_key, "2026-11-22T03:05:00.000Z")
    unack = event("incident.unacknowledged", incident_key, "2026-11-22T03:06:00.000Z")

    # The unacknowledgement is taken first: nothing to unacknowledge yet.
    assert apply_event(unack) is Outcome.UNCHANGED
    assert apply_event(ack) is Outcome.OVERTAKEN
    assert status(incident_key) == "triggered"


def test_in_order_both_apply(incident_key):
    ack = event("incident.acknowledged", incident_key, "2026-11-22T03:05:00.000Z")
    unack = event("incident.unacknowledged", incident_key, "2026-11-22T03:06:00.000Z")
    assert apply_event(ack) is Outcome.APPLIED
    assert status(incident_key) == "acknowledged"
    assert apply_event(unack) is Outcome.APPLIED
    assert status(incident_key) == "triggered"


def test_notes_are_never_overtaken(incident_key):
    assert apply_event(event("incident.resolved", incident_key,
                             "2026-11-22T03:09:00.000Z")) is Outcome.APPLIED
    late_note = event("incident.escalated", incident_key, "2026-11-22T03:01:00.000Z")
    assert apply_event(late_note) is Outcome.APPLIED
