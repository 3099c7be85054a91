"""A SEV1 pages once and posts one Slack parent; repeats add nothing; resolution follows."""

from __future__ import annotations

import sys
import time

import httpx
import orjson
import pytest

from tests.conftest import API_TOKEN, WEBHOOK_TOKEN, ChildProcess, wait_for
from tests.factories import alert, payload

HOOK = {"Authorization": f"Bearer {WEBHOOK_TOKEN}", "Content-Type": "application/json"}
API = {"Authorization": f"Bearer {API_TOKEN}"}

pytestmark = [pytest.mark.usefixtures("clean_state", "notifying_worker"), pytest.mark.timeout(120)]


def post(api, body) -> None:
    response = httpx.post(f"{api.url}/webhooks/alertmanager", content=orjson.dumps(body),
                          headers=HOOK, timeout=10)
    assert response.status_code == 202, response.text


def incident(api, incident_id: int = 1) -> dict:
    return httpx.get(f"{api.url}/api/incidents/{incident_id}", headers=API, timeout=10).json()


def settled(api, incident_id: int = 1) -> dict:
    """The incident once no notification of it is pending any more."""
    def done():
        shown = incident(api, incident_id)
        pending = [n for n in shown.get("notifications", []) if n["status"] == "pending"]
        return shown if shown.get("notifications") and not pending else None
    return wait_for(done, timeout=30, interval=0.2, what="notifications delivered")


def drained(redis_client) -> bool:
    queues = ("ingest", "page", "notify")
    return not any(redis_client.llen(q) for q in queues) and not redis_client.hlen("unacked")


def actions(events) -> list[str]:
    return [e["event_action"] for e in events]


@pytest.fixture
def fresh_fakes(fake_slack, fake_pagerduty):
    seen_slack = len(fake_slack.requests)
    seen_pd = len(fake_pagerduty.events)
    return lambda: (fake_slack.requests[seen_slack:], fake_pagerduty.events[seen_pd:])


def test_a_sev1_pages_once_and_posts_one_parent_and_repeats_add_nothing(
    notifying_api, fake_slack, fresh_fakes, redis_client
):
    body = payload(alert(severity="critical", env="prod"))
    post(notifying_api, body)
    shown = settled(notifying_api)
    slack, pages = fresh_fakes()
    assert actions(pages) == ["trigger"]
    assert pages[0]["dedup_key"] == shown["key"]
    assert pages[0]["payload"]["severity"] == "critical"
    parents = [r for r in slack if r.method == "chat.postMessage" and not r.body.get("thread_ts")]
    assert len(parents) == 1
    assert {(n["channel"], n["action"], n["status"]) for n in shown["notifications"]} == {
        ("slack", "trigger", "sent"), ("pagerduty", "trigger", "sent"),
    }

    for _ in range(5):
        post(notifying_api, body)
    wait_for(lambda: drained(redis_client), what="re-sends processed")
    settled(notifying_api)
    slack, pages = fresh_fakes()
    assert actions(pages) == ["trigger"]
    assert len([r for r in slack if r.method == "chat.postMessage"]) == 1


def test_resolution_from_alertmanager_resolves_the_page_and_edits_the_parent(
    notifying_api, fake_slack, fresh_fakes
):
    post(notifying_api, payload(alert(severity="critical", env="prod")))
    settled(notifying_api)
    post(notifying_api, payload(alert("resolved", severity="critical", env="prod")))

    def resolved_everywhere():
        slack, pages = fresh_fakes()
        return "resolve" in actions(pages) and any(r.method == "chat.update" for r in slack)

    wait_for(resolved_everywhere, timeout=30, what="resolve sent to PagerDuty and Slack")
    shown = settled(notifying_api)
    slack, pages = fresh_fakes()
    assert actions(pages) == ["trigger", "resolve"]
    assert {p["dedup_key"] for p in pages} == {shown["key"]}
    [parent] = [r for r in slack if r.method == "chat.postMessage" and not r.body.get("thread_ts")]
    replies = [r for r in slack if r.method == "chat.postMessage" and r.body.get("thread_ts")]
    assert replies, "a resolution also replies in the thread"
    [update] = [r for r in slack if r.method == "chat.update"]
    assert update.body["ts"] == fake_slack.parents(parent.body["channel"])[-1].ts


def test_acknowledge_and_resolve_by_hand_reach_pagerduty_and_slack(
    notifying_api, fresh_fakes
):
    post(notifying_api, payload(alert(severity="critical", env="prod")))
    settled(notifying_api)
    for step in ("acknowledge", "resolve"):
        response = httpx.post(f"{notifying_api.url}/api/incidents/1/{step}", headers=API, timeout=10)
        assert response.status_code == 200, response.text
        settled(notifying_api)
    slack, pages = fresh_fakes()
    assert actions(pages) == ["trigger", "acknowledge", "resolve"]
    assert len([r for r in slack if r.method == "chat.update"]) == 2


def test_an_unacknowledged_sev1_escalates_once_per_ack_timeout_up_to_repeat(
    notifying_api, fresh_fakes, notify_env, tmp_path
):
    beat = ChildProcess(
        [sys.executable, "-m", "incident", "beat", "--schedule", str(tmp_path / "schedule")],
        tmp_path / "beat.log", notify_env,
    )
    beat.name = "beat"
    try:
        post(notifying_api, payload(alert(severity="critical", env="prod")))
        settled(notifying_api)

        def escalated_twice():
            kinds = [e["kind"] for e in incident(notifying_api)["timeline"]]
            return kinds.count("escalated") >= 2

        wait_for(escalated_twice, timeout=30, interval=0.5, what="two escalations")
        # repeat: 2 bounds it; more polls, past another ack_timeout, add nothing.
        time.sleep(4)
        shown = settled(notifying_api)
        assert [e["kind"] for e in shown["timeline"]].count("escalated") == 2
        _, pages = fresh_fakes()
        assert actions(pages) == ["trigger", "trigger", "trigger"]  # each escalation re-sent with the same key
    finally:
        beat.stop()
