"""Slack and PagerDuty failures are retried only when they can pass, after the
service's own Retry-After or a growing backoff, and never post twice."""

from __future__ import annotations

import itertools
import time

import pytest

from tests.conftest import wait_for
from tests.factories import alert, payload
from tests.notifications.support import incident, ledger, ledger_row, post, settled

pytestmark = [pytest.mark.usefixtures("clean_state", "notifying_worker"), pytest.mark.timeout(120)]

SEV3 = {"severity": "warning"}  # Slack only
SEV1 = {"severity": "critical", "env": "prod"}  # Slack and PagerDuty


@pytest.fixture
def new_requests(fake_slack, fake_pagerduty):
    """What each fake received since the test began (the fakes live for the module)."""
    seen_slack = len(fake_slack.requests)
    seen_pagerduty = len(fake_pagerduty.requests)
    seen_events = len(fake_pagerduty.events)
    return lambda: (
        fake_slack.requests[seen_slack:],
        fake_pagerduty.requests[seen_pagerduty:],
        fake_pagerduty.events[seen_events:],
    )


def test_a_slack_429_is_retried_after_its_retry_after_and_posts_one_parent(
    notifying_api, fake_slack, new_requests
):
    fake_slack.fail_next(1, status=429, retry_after=2)
    post(notifying_api, payload(alert(**SEV3)))
    shown = settled(notifying_api)

    slack, _, _ = new_requests()
    posts = [r for r in slack if r.method == "chat.postMessage"]
    assert len(posts) == 2, [r.method for r in slack]
    refused, accepted = posts
    assert accepted.at - refused.at >= 2.0, "retried before Slack's Retry-After had passed"
    [parent] = fake_slack.parents(fake_slack.channel_id("incidents"))
    row = ledger_row(shown["id"], "slack")
    assert (row["status"], row["external_id"], row["attempts"]) == ("sent", parent.ts, 2)
    assert parent.metadata["event_payload"]["ledger_id"] == row["id"]


def test_pagerduty_5xx_is_retried_with_growing_backoff_until_accepted(
    notifying_api, fake_pagerduty, new_requests
):
    fake_pagerduty.fail_next(3, status=500)
    post(notifying_api, payload(alert(**SEV1)))

    def trigger_sent():
        rows = [r for r in ledger(1) if r["channel"] == "pagerduty"]
        return rows[0] if rows and rows[0]["status"] == "sent" else None

    # Backoff is at least 1 + 2 + 4 s and at most 2 + 4 + 8 s.
    row = wait_for(trigger_sent, timeout=40, interval=0.2, what="the PagerDuty trigger sent")

    _, requests, events = new_requests()
    assert len(requests) == 4
    assert [e["event_action"] for e in events] == ["trigger"]
    assert events[0]["dedup_key"] == incident(notifying_api)["key"] == row["external_id"]
    assert row["attempts"] == 4
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(requests)]
    # Jitter spans the upper half of 2, 4, 8 s, so each wait is at least half its ceiling.
    assert gaps[0] >= 1.0 and gaps[1] >= 2.0 and gaps[2] >= 4.0, gaps


def test_a_pagerduty_400_fails_at_once_with_its_error_and_is_not_retried(
    notifying_api, fake_pagerduty, new_requests
):
    fake_pagerduty.fail_next(1, status=400, error="'payload.summary' is missing or blank")
    post(notifying_api, payload(alert(**SEV1)))
    shown = settled(notifying_api)
    # Longer than the first retry's backoff (at most 2 s) would have waited.
    time.sleep(4)

    _, requests, events = new_requests()
    assert len(requests) == 1
    assert events == []
    row = ledger_row(shown["id"], "pagerduty")
    assert (row["status"], row["attempts"]) == ("failed", 1)
    assert "HTTP 400" in row["last_error"] and "payload.summary" in row["last_error"]

    notifications = {(n["channel"], n["action"]): n for n in incident(notifying_api)["notifications"]}
    assert notifications[("slack", "trigger")]["status"] == "sent"
    failed = notifications[("pagerduty", "trigger")]
    assert failed["status"] == "failed"
    # An operator reading the incident must see why the page did not go out,
    # as remediations show theirs.
    assert "HTTP 400" in (failed.get("last_error") or ""), (
        f"the incident JSON does not say why the page failed: {failed}"
    )
