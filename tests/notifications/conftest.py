"""A worker and an api that talk to fake Slack and PagerDuty servers, through the real clients."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.conftest import ApiProcess, WorkerProcess
from tests.fakes.pagerduty import DEFAULT_ROUTING_KEY, FakePagerDuty
from tests.fakes.slack import DEFAULT_TOKEN, FakeSlack

CHANNEL = "incidents"


@pytest.fixture(scope="module")
def fake_slack() -> Iterator[FakeSlack]:
    with FakeSlack(channels=(CHANNEL, "db-oncall")) as slack:
        yield slack


@pytest.fixture(scope="module")
def fake_pagerduty() -> Iterator[FakePagerDuty]:
    with FakePagerDuty() as pagerduty:
        yield pagerduty


@pytest.fixture(scope="module")
def notify_env(incident_environment, fake_slack, fake_pagerduty, tmp_path_factory) -> dict[str, str]:
    rules = tmp_path_factory.mktemp("rules") / "rules.yml"
    rules.write_text(RULES)
    return {
        **incident_environment,
        "INCIDENT_SLACK_BOT_TOKEN": DEFAULT_TOKEN,
        "INCIDENT_SLACK_CHANNEL": fake_slack.channel_id(CHANNEL),
        "INCIDENT_SLACK_API_URL": fake_slack.url,
        "INCIDENT_PAGERDUTY_ROUTING_KEY": DEFAULT_ROUTING_KEY,
        "INCIDENT_PAGERDUTY_EVENTS_URL": fake_pagerduty.url,
        # The worker trusts the fake PagerDuty's throwaway CA, and only it.
        "SSL_CERT_FILE": fake_pagerduty.ca_path,
        "INCIDENT_RULES_FILE": str(rules),
        "INCIDENT_ESCALATION_POLL_SECONDS": "0.5",
    }


# Short timers so escalation can be seen within a test.
RULES = """
escalation:
  SEV1: {pagerduty: critical, slack: true, ack_timeout: 3s, repeat: 2}
  SEV2: {pagerduty: error, slack: true, ack_timeout: 15m}
  SEV3: {slack: true, escalate_after: 1h, escalate_to: SEV2}
  SEV4: {slack: true}
"""


@pytest.fixture(scope="module")
def notifying_worker(notify_env, tmp_path_factory) -> Iterator[WorkerProcess]:
    redis.Redis.from_url(notify_env["INCIDENT_BROKER_URL"]).flushdb()
    process = WorkerProcess(notify_env, tmp_path_factory.mktemp("worker") / "worker.log")
    process.wait_ready()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def notifying_api(notify_env, tmp_path_factory) -> Iterator[ApiProcess]:
    api = ApiProcess(notify_env, tmp_path_factory.mktemp("api") / "api.log")
    api.wait_ready()
    yield api
    api.stop()
