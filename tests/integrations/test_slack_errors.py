"""Slack's failures become typed DeliveryErrors after exactly one request: the
SDK never retries or sleeps; Celery decides."""

from __future__ import annotations

import socket
import time

import pytest

from incident.integrations.base import (
    IncidentView,
    PermanentDeliveryError,
    RateLimited,
    TransientDeliveryError,
)
from incident.integrations.slack import SlackNotifier
from tests.fakes.slack import FakeSlack

CHANNEL = "#incidents"


def test_rate_limit_carries_retry_after_from_one_request(
    slack: SlackNotifier, fake_slack: FakeSlack, incident: IncidentView
) -> None:
    fake_slack.fail_next(1, status=429, retry_after=2)

    started = time.monotonic()
    with pytest.raises(RateLimited) as caught:
        slack.post_parent(CHANNEL, incident, ledger_id=1)

    assert caught.value.retry_after == 2.0
    assert caught.value.retryable
    assert len(fake_slack.requests) == 1
    assert time.monotonic() - started < 1.0
    assert fake_slack.messages == []


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_transient_after_one_request(
    slack: SlackNotifier, fake_slack: FakeSlack, incident: IncidentView, status: int
) -> None:
    fake_slack.fail_next(1, status=status)

    with pytest.raises(TransientDeliveryError) as caught:
        slack.post_parent(CHANNEL, incident, ledger_id=1)

    assert caught.value.code == f"http_{status}"
    assert len(fake_slack.requests) == 1


@pytest.mark.parametrize("error", ["internal_error", "fatal_error", "service_unavailable"])
def test_slack_side_error_strings_are_transient(
    slack: SlackNotifier, fake_slack: FakeSlack, incident: IncidentView, error: str
) -> None:
    fake_slack.fail_next(1, error=error)

    with pytest.raises(TransientDeliveryError) as caught:
        slack.post_parent(CHANNEL, incident, ledger_id=1)

    assert caught.value.code == error


def test_unknown_channel_is_permanent(
    slack: SlackNotifier, fake_slack: FakeSlack, incident: IncidentView
) -> None:
    fake_slack.fail_next(1, error="channel_not_found")

    with pytest.raises(PermanentDeliveryError) as caught:
        slack.post_parent(CHANNEL, incident, ledger_id=1)

    assert caught.value.code == "channel_not_found"
    assert not caught.value.retryable
    assert "channel_not_found" in str(caught.value)
    assert len(fake_slack.requests) == 1


def test_a_channel_slack_does_not_know_is_permanent(
    slack: SlackNotifier, fake_slack: FakeSlack, incident: IncidentView
) -> None:
    with pytest.raises(PermanentDeliveryError, match="channel_not_found"):
        slack.post_parent("#nowhere", incident, ledger_id=1)
    with pytest.raises(PermanentDeliveryError, match="set INCIDENT_SLACK_CHANNEL to its id"):
        slack.find_posted("#nowhere", ledger_id=1)


def test_a_bad_token_is_permanent_and_never_echoed(
    fake_slack: FakeSlack, incident: IncidentView
) -> None:
    wrong_token = "xoxb-wrong-secret-123456"
    notifier = SlackNotifier(wrong_token, api_url=fake_slack.url)

    with pytest.raises(PermanentDeliveryError) as caught:
        notifier.post_parent(CHANNEL, incident, ledger_id=1)

    assert caught.value.code == "invalid_auth"
    assert wrong_token not in str(caught.value) and wrong_token not in repr(caught.value)
    assert wrong_token not in repr(notifier)


def test_a_slow_answer_times_out_as_transient(
    fake_slack: FakeSlack, incident: IncidentView
) -> None:
    notifier = SlackNotifier(fake_slack.token, api_url=fake_slack.url, timeout=1)
    fake_slack.delay_next(1, 5)

    started = time.monotonic()
    with pytest.raises(TransientDeliveryError):
        notifier.post_parent(CHANNEL, incident, ledger_id=1)

    assert time.monotonic() - started < 3
    assert len(fake_slack.requests) == 1


def test_a_refused_connection_is_transient(incident: IncidentView) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    notifier = SlackNotifier("xoxb-token", api_url=f"http://127.0.0.1:{port}/api/")

    with pytest.raises(TransientDeliveryError):
        notifier.post_parent(CHANNEL, incident, ledger_id=1)


def test_the_next_request_after_a_failure_succeeds(
    slack: SlackNotifier, fake_slack: FakeSlack, incident: IncidentView
) -> None:
    fake_slack.fail_next(1, status=500)
    with pytest.raises(TransientDeliveryError):
        slack.post_parent(CHANNEL, incident, ledger_id=1)

    ts = slack.post_parent(CHANNEL, incident, ledger_id=1)

    assert [m.ts for m in fake_slack.parents(CHANNEL)] == [ts]
