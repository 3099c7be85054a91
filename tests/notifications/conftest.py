"""A worker and an api that talk to fake Slack and PagerDuty servers, through the real clients."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import (
    ApiProcess, WorkerProcess, notifiers_env, running_api, running_worker,
)
from tests.fakes.pagerduty import FakePagerDuty
from tests.fakes.slack import FakeSlack

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
        **notifiers_env(fake_slack, fake_pagerduty, CHANNEL),
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
    yield from running_worker(notify_env, tmp_path_factory)


@pytest.fixture(scope="module")
def notifying_api(notify_env, tmp_path_factory) -> Iterator[ApiProcess]:
    yield from running_api(notify_env, tmp_path_factory)
