"""An api and a worker with Slack interactivity on, talking to fake Slack,
PagerDuty and response_url servers through the real client libraries; and
clicks signed exactly as Slack signs them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from slack_sdk.signature import SignatureVerifier

from tests.conftest import (
    ApiProcess, WorkerProcess, notifiers_env, running_api, running_worker,
)
from tests.fakes.pagerduty import FakePagerDuty
from tests.fakes.slack import FakeSlack
from tests.fakes.slack_responses import FakeResponseUrls

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
CHANNEL = "incidents"
ALICE = {"id": "U024BE7LH", "username": "alice", "name": "alice", "team_id": "T0FAKE"}
BOB = {"id": "U0B0B0B0B", "username": "bob", "name": "bob", "team_id": "T0FAKE"}

# Every severity pages and posts; no timer fires within a test.
RULES = """
escalation:
  SEV1: {pagerduty: critical, slack: true, ack_timeout: 1h}
  SEV2: {pagerduty: error, slack: true, ack_timeout: 1h}
  SEV3: {pagerduty: warning, slack: true}
  SEV4: {pagerduty: info, slack: true}
"""


def block_actions(
    action: dict[str, Any], *, user: dict[str, str] = ALICE, response_url: str | None = None,
    message_ts: str = "1700000000.000100",
) -> dict[str, Any]:
    """A ``block_actions`` payload as Slack sends it for a click on a parent message."""
    payload: dict[str, Any] = {
        "type": "block_actions",
        "user": user,
        "api_app_id": "A0FAKE",
        "token": "verification-token-unused",
        "container": {"type": "message", "message_ts": message_ts, "channel_id": "C0000000001",
                      "is_ephemeral": False},
        "trigger_id": "1234.5678.abcdef",
        "team": {"id": "T0FAKE", "domain": "example"},
        "channel": {"id": "C0000000001", "name": CHANNEL},
        "message": {"type": "message", "ts": message_ts, "text": "…", "blocks": []},
        "actions": [{"block_id": "incident.actions", "action_ts": f"{time.time():.6f}",
                     "type": "button", **action}],
    }
    if response_url is not None:
        payload["response_url"] = response_url
    return payload


def button(action_id: str, value: str) -> dict[str, Any]:
    return {"action_id": action_id, "value": value, "text": {"type": "plain_text", "text": "…"}}


def menu(value: str) -> dict[str, Any]:
    return {"action_id": "incident.silence", "type": "static_select",
            "selected_option": {"text": {"type": "plain_text", "text": value.split(":")[-1]},
                                "value": value}}


def form(payload: dict[str, Any] | str) -> bytes:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return urlencode({"payload": text}).encode()


def signed(body: bytes, *, secret: str = SIGNING_SECRET,
           timestamp: int | None = None) -> dict[str, str]:
    """The headers Slack sends with ``body``: its timestamp and v0 signature."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = SignatureVerifier(secret).generate_signature(timestamp=stamp, body=body)
    return {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": signature,
    }


@pytest.fixture(scope="module")
def fake_slack() -> Iterator[FakeSlack]:
    with FakeSlack(channels=(CHANNEL,)) as slack:
        yield slack


@pytest.fixture(scope="module")
def fake_pagerduty() -> Iterator[FakePagerDuty]:
    with FakePagerDuty() as pagerduty:
        yield pagerduty


@pytest.fixture(scope="module")
def response_urls() -> Iterator[FakeResponseUrls]:
    with FakeResponseUrls() as fake:
        yield fake


@pytest.fixture(scope="module")
def slack_rules() -> str:
    """The rules file's text (a module may override it)."""
    return RULES


@pytest.fixture(scope="module")
def slack_env(
    incident_environment, fake_slack, fake_pagerduty, slack_rules, tmp_path_factory
) -> dict[str, str]:
    rules = tmp_path_factory.mktemp("rules") / "rules.yml"
    rules.write_text(slack_rules)
    return {
        **incident_environment,
        **notifiers_env(fake_slack, fake_pagerduty, CHANNEL),
        "INCIDENT_SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "INCIDENT_RULES_FILE": str(rules),
    }


@pytest.fixture(scope="module")
def slack_worker(slack_env, tmp_path_factory) -> Iterator[WorkerProcess]:
    yield from running_worker(slack_env, tmp_path_factory)


@pytest.fixture(scope="module")
def slack_api(slack_env, tmp_path_factory) -> Iterator[ApiProcess]:
    yield from running_api(slack_env, tmp_path_factory)
