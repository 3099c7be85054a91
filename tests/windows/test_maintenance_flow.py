"""Maintenance windows through the whole system: the real api and worker processes, the real
Alertmanager binary for the scheduled silence, fake Slack and PagerDuty, a local remediation
target. An incident opened in a window pages nobody until the window ends, then exactly once."""

from __future__ import annotations

from datetime import datetime, timedelta

import httpx
import pytest
from sqlalchemy import func, update

from tests.conftest import wait_for
from tests.notifications.support import drained, incident, post
from incident.db import session_scope
from incident.models import MaintenanceWindow
from incident.queues import PAGE
from incident.windows.suppression import RELEASE_TASK
from incident.worker.app import app
from tests.windows.conftest import API, create_window, held_back, webhook

pytestmark = [
    pytest.mark.alertmanager, pytest.mark.timeout(180),
    pytest.mark.usefixtures("clean_state", "windows_worker"),
]


@pytest.fixture
def fresh(fake_slack, fake_pagerduty, target):
    """What Slack, PagerDuty and the remediation target received from here on."""
    seen = len(fake_slack.requests), len(fake_pagerduty.events), len(target.requests)

    def new():
        return (
            [r for r in fake_slack.requests[seen[0]:] if r.method == "chat.postMessage"],
            [e["event_action"] for e in fake_pagerduty.events[seen[1]:]],
            target.requests[seen[2]:],
        )

    return new


def silence(real_alertmanager, silence_id: str) -> dict:
    response = httpx.get(f"{real_alertmanager.url}/api/v2/silence/{silence_id}", timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def held_incident(api, incident_id: int = 1) -> dict:
    def held():
        response = httpx.get(f"{api.url}/api/incidents/{incident_id}", headers=API, timeout=10)
        if response.status_code != 200:
            return None
        shown = response.json()
        return shown if shown["in_maintenance"] else None

    return wait_for(held, timeout=30, interval=0.2, what="the incident held in maintenance")


def told_once(api, fresh, incident_id: int = 1) -> dict:
    """Waits for the opening to reach every channel, then checks it reached each once."""
    def delivered():
        shown = incident(api, incident_id)
        done = {(n["channel"], n["action"], n["status"]) for n in shown["notifications"]}
        ran = [r for r in shown["remediations"] if r["status"] == "succeeded"]
        wanted = {("slack", "trigger", "sent"), ("pagerduty", "trigger", "sent")}
        return shown if wanted <= done and ran else None

    shown = wait_for(delivered, timeout=60, interval=0.2, what="the held-back opening told")
    slack, pages, calls = fresh()
    assert pages == ["trigger"]
    assert len([r for r in slack if not r.body.get("thread_ts")]) == 1
    assert [r.method for r in calls] == ["/services/db/restart"]
    triggers = [n["channel"] for n in shown["notifications"] if n["action"] == "trigger"]
    assert sorted(triggers) == ["pagerduty", "slack"]
    return shown


def test_a_scheduled_window_is_an_alertmanager_silence_pending_then_active_then_suppressing(
    windows_api, real_alertmanager
):
    window = create_window(windows_api.url, 'service="db"', 'alertname=~"Disk.*"',
                           start=timedelta(seconds=3))
    assert window["active"] is False
    scheduled = silence(real_alertmanager, window["silence_id"])
    assert scheduled["status"]["state"] == "pending"
    assert scheduled["createdBy"] == "api"
    assert f"maintenance window #{window['id']}" in scheduled["comment"]
    assert {(m["name"], m["value"], m["isRegex"], m["isEqual"]) for m in scheduled["matchers"]} == {
        ("service", "db", False, True), ("alertname", "Disk.*", True, True),
    }
    # Alertmanager keeps milliseconds.
    for ours, theirs in (("starts_at", "startsAt"), ("ends_at", "endsAt")):
        gap = datetime.fromisoformat(scheduled[theirs]) - datetime.fromisoformat(window[ours])
        assert abs(gap) < timedelta(milliseconds=1), (ours, scheduled[theirs], window[ours])

    wait_for(lambda: silence(real_alertmanager, window["silence_id"])["status"]["state"] == "active",
             timeout=30, interval=0.2, what="the silence active")
    real_alertmanager.post_alerts({"labels": {"alertname": "DiskFull", "service": "db"}})

    def suppressed():
        alerts = httpx.get(f"{real_alertmanager.url}/api/v2/alerts", timeout=5).json()
        return [a for a in alerts if a["labels"].get("alertname") == "DiskFull"
                and a["status"]["state"] == "suppressed"]

    [held] = wait_for(suppressed, timeout=30, interval=0.2, what="the alert suppressed")
    assert held["status"]["silencedBy"] == [window["silence_id"]]
    listed = httpx.get(f"{windows_api.url}/api/maintenance", headers=API, timeout=10).json()
    assert [(w["id"], w["active"]) for w in listed["items"]] == [(window["id"], True)]


def test_an_incident_in_a_window_pages_nobody_until_the_window_is_ended_early_then_once(
    windows_api, real_alertmanager, fresh
):
    window = create_window(windows_api.url, 'service="db"')
    post(windows_api, webhook(service="db", alertname="DiskFull"))
    shown = held_incident(windows_api)
    assert [e["detail"] for e in shown["timeline"] if e["kind"] == "maintenance"] == [
        {"by": "maintenance", "windows": [window["id"]]}
    ]
    # Ingestion committed the hold in the same transaction as the opening: nothing to tell.
    assert shown["notifications"] == [] and shown["remediations"] == []
    assert fresh() == ([], [], [])

    ended = httpx.delete(f"{windows_api.url}/api/maintenance/{window['id']}", headers=API, timeout=30)
    assert ended.status_code == 200, ended.text
    assert ended.json()["active"] is False
    assert silence(real_alertmanager, window["silence_id"])["status"]["state"] == "expired"

    shown = told_once(windows_api, fresh)
    assert shown["in_maintenance"] is False
    assert shown["timeline"][-1]["kind"] in {"maintenance", "remediation", "notified"}
    again = httpx.delete(f"{windows_api.url}/api/maintenance/{window['id']}", headers=API, timeout=30)
    assert again.status_code == 409


def test_a_window_ending_on_time_tells_its_incident_once_when_beat_polls(
    windows_api, fresh, redis_client
):
    window = create_window(windows_api.url, 'service="db"')
    post(windows_api, webhook(service="db"))
    held_incident(windows_api)
    beat_tick()
    wait_for(lambda: drained(redis_client), what="the webhook and the poll processed")
    assert fresh() == ([], [], [])
    assert held_back() == [1]

    run_out(window["id"])
    beat_tick()
    told_once(windows_api, fresh)
    # The next polls (a second beat's too) find nothing left to tell.
    beat_tick()
    beat_tick()
    wait_for(lambda: drained(redis_client), what="the polls and deliveries finished")
    slack, pages, calls = fresh()
    assert (len([r for r in slack if not r.body.get("thread_ts")]), pages, len(calls)) == (
        1, ["trigger"], 1)
    assert held_back() == []


def beat_tick() -> None:
    """What beat sends every ``escalation_poll_seconds``."""
    app.send_task(RELEASE_TASK, queue=PAGE)


def run_out(window_id: int) -> None:
    """The window's end comes: moved to a second ago rather than waited for."""
    with session_scope() as session:
        session.execute(
            update(MaintenanceWindow).where(MaintenanceWindow.id == window_id).values(
                starts_at=MaintenanceWindow.starts_at - timedelta(hours=2),
                ends_at=func.now() - timedelta(seconds=1),
            )
        )
