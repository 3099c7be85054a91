"""PagerDuty back to us, end to end: signed V3 webhooks into the real app, applied by a real
worker, told to the fake Slack and never echoed to the fake PagerDuty."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from incident.api.app import create_app
from incident.config import Settings, get_settings
from incident.context import Context
from incident.db import session_scope
from incident.notifications import sweeper
from incident.notifications.models import EscalationTimer
from incident.rules import load_rules
from incident.worker.app import publish
from tests.conftest import API_TOKEN, WEBHOOK_TOKEN, wait_for
from tests.factories import alert, payload
from tests.fakes.pagerduty import (
    WEBHOOK_SECRET,
    incident_data,
    note_data,
    signed_headers,
    webhook,
)

pytestmark = [pytest.mark.usefixtures("notifying_worker"), pytest.mark.timeout(180)]

API = {"Authorization": f"Bearer {API_TOKEN}"}
HOOK = {"Authorization": f"Bearer {WEBHOOK_TOKEN}", "Content-Type": "application/json"}
ALICE = {"by": "pagerduty", "user": "PAGENT1", "name": "Alice Oncall"}


@pytest.fixture
def settings(notify_env, monkeypatch) -> Iterator[Settings]:
    """This process's settings as the worker's, with PagerDuty's webhook secret."""
    for name, value in {**notify_env, "INCIDENT_PAGERDUTY_WEBHOOK_SECRET": WEBHOOK_SECRET}.items():
        monkeypatch.setenv(name, value)
    yield Settings()
    # Whatever read the settings meanwhile must not keep them for later tests.
    get_settings.cache_clear()


@pytest.fixture
def app(settings, clean_state) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def fresh(fake_slack, fake_pagerduty):
    """What the fakes heard from now on."""
    slack, pages = len(fake_slack.requests), len(fake_pagerduty.events)
    return lambda: (fake_slack.requests[slack:], fake_pagerduty.events[pages:])


def shown(app, incident_id: int = 1) -> dict:
    response = app.get(f"/api/incidents/{incident_id}", headers=API)
    return response.json() if response.status_code == 200 else {}


def kinds(app) -> list[str]:
    return [entry["kind"] for entry in shown(app).get("timeline", [])]


def settled(app) -> dict:
    def done():
        incident = shown(app)
        told = incident.get("notifications", [])
        return incident if told and all(n["status"] == "sent" for n in told) else None

    return wait_for(done, timeout=30, interval=0.2, what="notifications delivered")


def opened(app) -> dict:
    """A SEV1, paged and posted to Slack."""
    body = orjson.dumps(payload(alert(severity="critical", env="prod")))
    assert app.post("/webhooks/alertmanager", content=body, headers=HOOK).status_code == 202
    incident = wait_for(lambda: shown(app).get("key") and settled(app), what="incident paged")
    assert {n["channel"] for n in incident["notifications"]} == {"slack", "pagerduty"}
    return incident


def deliver(app, document: dict) -> None:
    body = orjson.dumps(document)
    response = app.post("/webhooks/pagerduty", content=body, headers=signed_headers(body))
    assert response.status_code == 202, response.text


def outcomes(worker) -> dict[str, list[str]]:
    """Each applied event id's outcomes, from the worker's JSON log."""
    seen: dict[str, list[str]] = {}
    for line in worker.log().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == "pagerduty event":
            seen.setdefault(record.get("event_id"), []).append(record.get("outcome"))
    return seen


def timer() -> EscalationTimer:
    with session_scope() as session:
        row = session.scalars(select(EscalationTimer)).one()
        session.expunge(row)
        return row


def test_an_acknowledgement_in_pagerduty_acknowledges_tells_slack_and_is_not_echoed(
    app, fresh, notifying_worker
):
    incident = opened(app)
    assert timer().active
    deliver(app, webhook("incident.acknowledged", incident_data(incident["key"]), event_id="ACK1"))

    acknowledged = wait_for(lambda: shown(app)["status"] == "acknowledged" and settled(app),
                            what="acknowledged")
    assert acknowledged["acknowledged_by"] == ALICE
    [entry] = [e for e in acknowledged["timeline"] if e["kind"] == "acknowledged"]
    assert entry["detail"] == ALICE
    slack, pages = fresh()
    assert [p["event_action"] for p in pages] == ["trigger"], "nothing sent back to PagerDuty"
    told = [(n["channel"], n["action"]) for n in acknowledged["notifications"]]
    assert ("slack", "acknowledge") in told and ("pagerduty", "acknowledge") not in told
    assert any(r.method == "chat.update" for r in slack), "the Slack parent shows it"
    posted = [json.dumps(r.body) for r in slack if r.method == "chat.postMessage"]
    assert any("Acknowledged in PagerDuty by Alice Oncall" in text for text in posted)
    assert outcomes(notifying_worker)["ACK1"] == ["applied"]


def test_the_same_event_delivered_twice_is_applied_once(app, notifying_worker):
    incident = opened(app)
    event = webhook("incident.acknowledged", incident_data(incident["key"]), event_id="DUP1")
    deliver(app, event)
    deliver(app, event)
    wait_for(lambda: len(outcomes(notifying_worker).get("DUP1", [])) == 2, what="both applied")
    assert sorted(outcomes(notifying_worker)["DUP1"]) == ["applied", "duplicate"]
    assert kinds(app).count("acknowledged") == 1

    # Another event that is no longer allowed (already acknowledged) changes nothing either.
    deliver(app, webhook("incident.acknowledged", incident_data(incident["key"]),
                         event_id="DUP2"))
    wait_for(lambda: outcomes(notifying_worker).get("DUP2") == ["unchanged"], what="unchanged")
    assert kinds(app).count("acknowledged") == 1


def test_an_acknowledgement_stops_ack_timeouts_and_unacknowledging_restarts_them(
    app, settings, fresh, notifying_worker
):
    """Beat's job is run here, with a context like the worker's."""
    context = Context(settings, load_rules(Path(settings.rules_file)), publish)
    later = datetime.now(UTC) + timedelta(minutes=5)  # far past the 3 s ack_timeout
    incident = opened(app)
    data = incident_data(incident["key"])

    deliver(app, webhook("incident.acknowledged", data, event_id="T-ACK"))
    wait_for(lambda: shown(app)["status"] == "acknowledged", what="acknowledged")
    assert not timer().active
    assert sweeper.fire_escalations(context.rules, context.events, now=later) == 0
    assert "escalated" not in kinds(app)

    deliver(app, webhook("incident.unacknowledged", data, event_id="T-UNACK"))
    back = wait_for(lambda: (i := shown(app))["status"] == "triggered" and i, what="triggered")
    assert back["acknowledged_by"] is None and back["acknowledged_at"] is None
    assert timer().active and timer().due_at < later
    # Polled as beat polls: the re-armed ack_timeout comes due 3 s after the unacknowledgement.
    wait_for(lambda: sweeper.fire_escalations(context.rules, context.events) == 1,
             timeout=15, interval=0.25, what="the ack_timeout fired again")
    assert "escalated" in kinds(app)

    # The escalation (by the system, not PagerDuty) pages again; the unacknowledgement did not.
    wait_for(lambda: len(fresh()[1]) == 2, what="the escalation paged")
    settled(app)
    _, pages = fresh()
    assert [p["event_action"] for p in pages] == ["trigger", "trigger"]
    unack = [e for e in shown(app)["timeline"] if e["kind"] == "unacknowledged"]
    assert unack[0]["detail"] == ALICE


def test_a_resolution_in_pagerduty_resolves_without_sending_a_resolve(app, fresh):
    incident = opened(app)
    deliver(app, webhook("incident.resolved", incident_data(incident["key"], status="resolved")))
    resolved = wait_for(lambda: shown(app)["status"] == "resolved" and settled(app),
                        what="resolved")
    assert resolved["resolved_by"] == ALICE
    assert resolved["acknowledged_by"] is None
    _, pages = fresh()
    assert [p["event_action"] for p in pages] == ["trigger"]
    assert ("slack", "resolve") in [(n["channel"], n["action"]) for n in resolved["notifications"]]
    assert not timer().active


def test_escalations_reassignments_delegations_and_notes_become_readable_notes(
    app, fake_slack, fresh, notifying_worker
):
    incident = opened(app)
    key = incident["key"]
    deliver(app, webhook("incident.escalated",
                         incident_data(key, assignees=("Bob Second",), policy="Checkout on-call")))
    deliver(app, webhook("incident.reassigned", incident_data(key, assignees=("Carol", "Dan"))))
    deliver(app, webhook("incident.delegated",
                         incident_data(key, assignees=("Erin DBA",), policy="Database on-call")))

    def notes(count: int) -> list[dict]:
        found = [e for e in shown(app)["timeline"] if e["kind"] == "note"]
        return found if len(found) == count else []

    # Applied in parallel by the worker's processes, so in any order.
    assert sorted(e["detail"]["note"] for e in wait_for(lambda: notes(3), what="three notes")) == [
        "Delegated in PagerDuty to Database on-call; assigned to Erin DBA",
        "Escalated in PagerDuty on Checkout on-call; assigned to Bob Second",
        "Reassigned in PagerDuty to Carol, Dan",
    ]
    # A note names only PagerDuty's incident: the events before it told which one is ours.
    deliver(app, webhook("incident.annotated", note_data("Rolling back the deploy")))
    every_note = wait_for(lambda: notes(4), what="the fourth note")
    assert every_note[-1]["detail"]["note"] == "Rolling back the deploy"
    assert all({k: e["detail"][k] for k in ("by", "user", "name")} == ALICE for e in every_note)
    assert shown(app)["status"] == "triggered"
    settled(app)
    slack, pages = fresh()
    # In its thread, or in the channel's digest when they come faster than Slack takes them.
    posted = [json.dumps(r.body) for r in slack if r.method == "chat.postMessage"]
    assert any("Note by Alice Oncall: Rolling back the deploy" in text for text in posted)
    assert [p["event_action"] for p in pages] == ["trigger"]


def test_events_for_unknown_incidents_are_answered_and_ignored(app, notifying_worker):
    incident = opened(app)
    deliver(app, webhook("incident.resolved", incident_data("not-one-of-ours",
                                                            pagerduty_id="POTHER"),
                         event_id="STRANGER"))
    deliver(app, webhook("incident.annotated", note_data("hi", pagerduty_id="POTHER"),
                         event_id="STRANGER-NOTE"))
    wait_for(lambda: {"STRANGER", "STRANGER-NOTE"} <= set(outcomes(notifying_worker)),
             what="both looked at")
    assert outcomes(notifying_worker)["STRANGER"] == ["unknown_incident"]
    assert outcomes(notifying_worker)["STRANGER-NOTE"] == ["unknown_incident"]
    assert shown(app)["status"] == "triggered"
    assert kinds(app) == ["opened"]
    assert incident["id"] == 1
