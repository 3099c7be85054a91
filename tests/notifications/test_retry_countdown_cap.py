"""A Retry-After longer than the broker's visibility timeout is cut below it, so the
retried message is not handed to a second worker while the first still waits."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from incident.config import get_settings
from incident.notifications.ledger import DELIVER_TASK
from incident.worker.tasks import notifications as notification_tasks
from tests.conftest import wait_for
from tests.factories import alert, payload
from tests.notifications.support import ledger, post

pytestmark = [pytest.mark.usefixtures("clean_state", "notifying_worker"), pytest.mark.timeout(120)]

SEV3 = {"severity": "warning"}  # Slack only


def retried_deliveries(client) -> list[dict]:
    """Deliver messages the broker holds that are retries: queued, or taken and
    waiting out their countdown unacknowledged."""
    raw = [m for queue in ("notify", "page") for m in client.lrange(queue, 0, -1)]
    raw += [json.loads(value)[0] for value in client.hvals("unacked")]
    messages = [json.loads(m) if isinstance(m, bytes | str) else m for m in raw]
    return [
        m for m in messages
        if m["headers"].get("task") == DELIVER_TASK and m["headers"].get("retries", 0) >= 1
    ]


def test_a_slack_retry_after_of_a_day_is_cut_below_the_visibility_timeout(
    notifying_api, fake_slack, redis_client
):
    fake_slack.fail_next(1, status=429, retry_after=100_000)
    post(notifying_api, payload(alert(**SEV3)))

    [message, *_] = wait_for(lambda: retried_deliveries(redis_client) or None, timeout=30,
                             what="the retried deliver message")
    countdown = (datetime.fromisoformat(message["headers"]["eta"]) - datetime.now(UTC)).total_seconds()

    visibility = get_settings().broker_visibility_timeout
    task = notification_tasks.deliver_notification
    # Its run, up to the hard time limit, still ends before the broker would redeliver it,
    assert countdown + task.time_limit < visibility, countdown
    # and it waits as much of Slack's Retry-After as is safe, not a short backoff instead.
    assert countdown > (visibility - task.time_limit) / 2, countdown
    [row] = [r for r in ledger() if r["channel"] == "slack"]
    assert row["status"] == "pending"


def test_the_digest_flush_cuts_its_countdowns_the_same_way():
    visibility = get_settings().broker_visibility_timeout
    for task in (notification_tasks.deliver_notification, notification_tasks.flush_slack_digest):
        assert notification_tasks.within_visibility(task, 100_000) + task.time_limit < visibility
        assert notification_tasks.within_visibility(task, 5.0) == 5.0
