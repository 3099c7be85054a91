"""GET /incidents/{id}: status, labels, alerts with their links, the timeline with who and
when, remediations, notifications, silences; and the Acknowledge, Resolve and Silence forms."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from incident.db import session_scope
from incident.incidents import store
from incident.incidents.lifecycle import SLACK, Actor
from incident.incidents.models import Incident, TimelineEntry, TimelineKind
from incident.models import IncidentSilence, Notification, RemediationRun
from tests.console.conftest import (
    LOCAL_EMAIL, RULES, console_client, csrf_of, open_incident, payload_with,
)
from tests.factories import T0
from tests.silences.conftest import silences_for

RUNBOOK = "https://runbooks.example.com/high-error-rate"


def incident_row(incident_id: int) -> Incident:
    with session_scope() as session:
        incident = session.get(Incident, incident_id)
        session.expunge(incident)
        return incident


def kinds(incident_id: int) -> list[tuple[str, dict]]:
    with session_scope() as session:
        return [(e.kind, e.detail) for e in session.scalars(
            select(TimelineEntry).where(TimelineEntry.incident_id == incident_id)
            .order_by(TimelineEntry.id))]


def test_the_page_shows_the_incident_its_alerts_and_links(signed_in):
    incident_id = open_incident(1, severity="critical", service="payments")

    page = signed_in.get(f"/incidents/{incident_id}")

    assert page.status_code == 200
    assert "Down 1" in page.text and 'class="sev sev-sev2"' in page.text
    assert 'status-triggered">triggered' in page.text
    assert '<code>service="payments"</code>' in page.text
    assert 'href="http://prometheus:9090/graph?g0.expr=up"' in page.text
    assert ">Acknowledge</button>" in page.text and ">Resolve</button>" in page.text
    assert [f'value="{d}"' in page.text for d in ("1h", "4h", "24h")] == [True] * 3


def test_the_runbook_annotation_is_linked(signed_in):
    incident_id = payload_with(RULES, annotations={"summary": "s", "runbook_url": RUNBOOK})
    page = signed_in.get(f"/incidents/{incident_id}").text
    assert f'href="{RUNBOOK}"' in page
    # Only web links: a javascript: URL is shown nowhere as a link.
    hostile = payload_with(RULES, annotations={"runbook_url": "javascript:alert(1)"}, n=2)
    assert 'href="javascript:' not in signed_in.get(f"/incidents/{hostile}").text


def test_the_timeline_says_who_did_what_and_when_in_utc_for_the_script(signed_in):
    incident_id = open_incident(1)
    with session_scope() as session:
        store.transition_by_hand(session, incident_id, TimelineKind.ACKNOWLEDGED,
                                 Actor(SLACK, "U024BE7LH", "alice"), now=T0 + timedelta(minutes=7))

    page = signed_in.get(f"/incidents/{incident_id}").text

    assert "slack: alice" in page
    assert ('<time datetime="2026-11-22T03:07:00+00:00" title="2026-11-22 03:07:00 UTC">'
            "2026-11-22 03:07 UTC</time>") in page
    assert ">Acknowledge</button>" not in page


def test_remediations_notifications_and_silences_are_shown(signed_in):
    incident_id = open_incident(1)
    with session_scope() as session:
        session.add(RemediationRun(
            incident_id=incident_id, step=1, name="restart-api", action="http", status="failed",
            attempts=3, max_attempts=3, breaker_key="", created_at=T0, finished_at=T0,
            last_error="deployer answered 503", output="HTTP 503 Service Unavailable",
        ))
        session.add(Notification(
            incident_id=incident_id, channel="pagerduty", action="trigger", step=1,
            status="sent", external_id="dedup", created_at=T0, sent_at=T0,
        ))
        session.add(IncidentSilence(
            incident_id=incident_id, silence_id="4f1c-silence", reference=uuid.uuid4().hex,
            matchers=['service="api"'], starts_at=T0, ends_at=T0 + timedelta(hours=1),
            created_by="web:dev@localhost",
        ))

    page = signed_in.get(f"/incidents/{incident_id}").text

    assert "restart-api" in page and "deployer answered 503" in page
    assert "HTTP 503 Service Unavailable" in page and "attempt 3 of 3" in page
    assert '<td data-label="Channel">pagerduty</td>' in page and 'status-sent">sent' in page
    assert "4f1c-silence" in page and "web:dev@localhost" in page


def test_an_unknown_or_garbage_incident_is_a_404_page(signed_in):
    for incident_id in ("999999", "abc", "0", "-1", "99999999999999999999999"):
        answer = signed_in.get(f"/incidents/{incident_id}")
        assert answer.status_code == 404, incident_id
        assert "No such incident" in answer.text


def test_acknowledge_then_resolve_through_the_forms_are_by_web_as_the_user(signed_in):
    incident_id = open_incident(1)
    page = f"/incidents/{incident_id}"

    acked = signed_in.post(f"{page}/acknowledge", data={"csrf": csrf_of(signed_in, page)},
                           follow_redirects=False)
    assert acked.status_code == 303 and acked.headers["location"] == page
    shown = signed_in.get(page).text
    assert f"Incident #{incident_id} acknowledged." in shown
    assert f"web: {LOCAL_EMAIL}" in shown
    # The message is shown once.
    assert "acknowledged." not in signed_in.get(page).text

    signed_in.post(f"{page}/resolve", data={"csrf": csrf_of(signed_in, page)})

    row = incident_row(incident_id)
    web = {"by": "web", "user": LOCAL_EMAIL, "name": LOCAL_EMAIL}
    assert row.status == "resolved"
    assert row.acknowledged_by == web and row.resolved_by == web
    assert [k for k in kinds(incident_id) if k[0] in ("acknowledged", "resolved")] == [
        ("acknowledged", web), ("resolved", web)]


def test_acting_twice_changes_nothing_and_says_so(signed_in):
    incident_id = open_incident(1)
    page = f"/incidents/{incident_id}"
    token = csrf_of(signed_in, page)
    signed_in.post(f"{page}/acknowledge", data={"csrf": token})

    again = signed_in.post(f"{page}/acknowledge", data={"csrf": token})

    assert again.status_code == 200
    assert f"Nothing changed: incident #{incident_id} is already acknowledged by {LOCAL_EMAIL}." \
        in again.text
    assert [k for k, _ in kinds(incident_id)].count("acknowledged") == 1


@pytest.mark.parametrize("action", ["acknowledge", "resolve", "silence"])
@pytest.mark.parametrize("token", [None, "", "forged"])
def test_a_forged_or_missing_csrf_token_is_refused_and_changes_nothing(signed_in, action, token):
    incident_id = open_incident(1)
    data = {"duration": "1h"} | ({} if token is None else {"csrf": token})

    answer = signed_in.post(f"/incidents/{incident_id}/{action}", data=data)

    assert answer.status_code == 403
    assert "nothing was changed" in answer.text
    assert incident_row(incident_id).status == "triggered"
    assert [k for k, _ in kinds(incident_id)] == ["opened"]


def test_a_token_from_another_session_is_refused(signed_in, clean_state):
    incident_id = open_incident(1)
    with console_client() as other:
        other.get("/login")
        theirs = csrf_of(other, f"/incidents/{incident_id}")
    answer = signed_in.post(f"/incidents/{incident_id}/acknowledge", data={"csrf": theirs})
    assert answer.status_code == 403
    assert incident_row(incident_id).status == "triggered"


def test_silence_without_alertmanager_says_what_to_set(signed_in):
    incident_id = open_incident(1)
    page = f"/incidents/{incident_id}"

    answer = signed_in.post(f"{page}/silence", data={"csrf": csrf_of(signed_in, page),
                                                     "duration": "4h"})

    assert answer.status_code == 200
    assert 'class="flash flash-error"' in answer.text
    assert "Not silenced" in answer.text and "INCIDENT_ALERTMANAGER_URL" in answer.text
    assert [k for k, _ in kinds(incident_id)] == ["opened"]


def test_silence_asks_for_a_listed_duration(signed_in):
    incident_id = open_incident(1)
    page = f"/incidents/{incident_id}"
    answer = signed_in.post(f"{page}/silence", data={"csrf": csrf_of(signed_in, page),
                                                     "duration": "99y"})
    assert "Choose how long to silence for: 1h, 4h, 24h." in answer.text


@pytest.mark.alertmanager
def test_silence_through_the_real_alertmanager_is_shown(clean_state, real_alertmanager):
    service = f"api-{uuid.uuid4().hex[:8]}"
    incident_id = open_incident(1, group={"alertname": "HighErrorRate", "service": service},
                                service=service)
    page = f"/incidents/{incident_id}"
    with console_client(alertmanager_url=real_alertmanager.url) as client:
        client.get("/login")
        answer = client.post(f"{page}/silence", data={"csrf": csrf_of(client, page),
                                                      "duration": "4h"})

    assert "Silenced for 4h." in answer.text
    [made] = silences_for(real_alertmanager.url, service)
    assert made["createdBy"] == f"web:{LOCAL_EMAIL}"
    assert f"/incidents/{incident_id}" in made["comment"]
    assert made["id"] in answer.text
    assert ("silenced", {"by": "web", "user": LOCAL_EMAIL, "name": LOCAL_EMAIL}) in [
        (k, {n: d[n] for n in ("by", "user", "name") if n in d}) for k, d in kinds(incident_id)]
