"""Routes: real payloads through a real worker to the fake Slack and PagerDuty.

Each team's incidents reach its own channel and PagerDuty service, a channel
can come from a label, `continue` reaches two destinations each once, and an
incident keeps the destinations it opened with when the rules file changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    ApiProcess, ChildProcess, WorkerProcess, notifiers_env, running_api, wait_for,
)
from tests.factories import alert, payload
from tests.fakes.pagerduty import DEFAULT_ROUTING_KEY, FakePagerDuty
from tests.fakes.slack import FakeSlack
from tests.notifications.support import post, settled

pytestmark = [pytest.mark.usefixtures("clean_state"), pytest.mark.timeout(180)]

PAYMENTS_KEY = "PAYMENTSKEY0000000000000000000P1"
SRE_KEY = "SREKEY00000000000000000000000S01"
ESCALATION = """
escalation:
  SEV1: {pagerduty: critical, slack: true}
  SEV2: {pagerduty: error, slack: true}
  SEV3: {slack: true}
  SEV4: {slack: true}
"""
ROUTES = ESCALATION + """
routes:
  - name: payments
    matchers: ['team="payments"']
    slack: {channel: "#payments-oncall"}
    pagerduty: {routing_key_env: PAGERDUTY_KEY_PAYMENTS}
    continue: true
  - name: sre
    matchers: ['team=~"payments|search"']
    pagerduty: {routing_key_env: PAGERDUTY_KEY_SRE}
    continue: true
  - name: by-team
    matchers: ['team=~".+"']
    slack: {channel: "#team-{labels.team}"}
"""
# The payments service moved to the SRE rotation, and its channel with it.
CHANGED = ESCALATION + """
routes:
  - matchers: ['team="payments"']
    slack: {channel: "#team-search"}
    pagerduty: {routing_key_env: PAGERDUTY_KEY_SRE}
"""


@pytest.fixture(scope="module")
def fake_slack() -> Iterator[FakeSlack]:
    with FakeSlack(
        channels=("incidents", "payments-oncall", "team-payments", "team-search")
    ) as slack:
        yield slack


@pytest.fixture(scope="module")
def fake_pagerduty() -> Iterator[FakePagerDuty]:
    with FakePagerDuty(other_routing_keys=(PAYMENTS_KEY, SRE_KEY)) as pagerduty:
        yield pagerduty


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("routing") / "rules.yml"
    path.write_text(ROUTES)
    return path


@pytest.fixture(scope="module")
def env(incident_environment, fake_slack, fake_pagerduty, rules_file) -> dict[str, str]:
    return {
        **incident_environment,
        **notifiers_env(fake_slack, fake_pagerduty, "incidents"),
        "INCIDENT_RULES_FILE": str(rules_file),
        "PAGERDUTY_KEY_PAYMENTS": PAYMENTS_KEY,
        "PAGERDUTY_KEY_SRE": SRE_KEY,
    }


@pytest.fixture(scope="module")
def api(env, tmp_path_factory) -> Iterator[ApiProcess]:
    yield from running_api(env, tmp_path_factory)


@pytest.fixture
def start_worker(env, tmp_path) -> Iterator:
    """Starts a worker (again) with the environment it is given; stops them all afterwards."""
    started: list[WorkerProcess] = []

    def start(extra: dict[str, str] | None = None) -> WorkerProcess:
        process = WorkerProcess({**env, **(extra or {})}, tmp_path / f"worker{len(started)}.log")
        started.append(process)
        process.wait_ready()
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def fresh(fake_slack, fake_pagerduty):
    """What the fakes received since the test began."""
    seen_messages = {m.ts for m in fake_slack.messages}
    seen_events = len(fake_pagerduty.events)
    return lambda: (
        [m for m in fake_slack.messages if m.ts not in seen_messages],
        fake_pagerduty.events[seen_events:],
    )


def page(**labels: str) -> dict:
    return payload(alert(severity="critical", env="prod", **labels))


def parents_by_channel(fake_slack: FakeSlack, messages) -> dict[str, int]:
    names = {fake_slack.channel_id(name): name for name in
             ("incidents", "payments-oncall", "team-payments", "team-search")}
    counted: dict[str, int] = {}
    for message in messages:
        if message.thread_ts is None:
            counted[names[message.channel]] = counted.get(names[message.channel], 0) + 1
    return counted


def pages_by_key(events, action: str = "trigger") -> dict[str, int]:
    counted: dict[str, int] = {}
    for event in events:
        if event["event_action"] == action:
            counted[event["routing_key"]] = counted.get(event["routing_key"], 0) + 1
    return counted


def test_continue_posts_to_two_channels_and_pages_two_services_each_once(
    api, start_worker, fake_slack, fresh
):
    start_worker()
    body = page(team="payments")
    post(api, body)
    post(api, body)  # Alertmanager's re-send changes nothing
    shown = settled(api)

    messages, events = fresh()
    assert parents_by_channel(fake_slack, messages) == {"payments-oncall": 1, "team-payments": 1}
    assert pages_by_key(events) == {PAYMENTS_KEY: 1, SRE_KEY: 1}
    assert shown["route"] == {
        "routes": ["payments", "sre", "by-team"],
        "slack": ["#payments-oncall", "#team-payments"],
        "pagerduty": ["PAGERDUTY_KEY_PAYMENTS", "PAGERDUTY_KEY_SRE"],
        "email": [],
    }


def test_a_second_team_gets_its_channel_from_its_label(api, start_worker, fake_slack, fresh):
    start_worker()
    post(api, page(team="search"))
    settled(api)

    messages, events = fresh()
    assert parents_by_channel(fake_slack, messages) == {"team-search": 1}
    assert pages_by_key(events) == {SRE_KEY: 1}


def test_an_incident_no_route_matches_goes_to_the_defaults(api, start_worker, fake_slack, fresh):
    start_worker()
    post(api, page())
    shown = settled(api)

    messages, events = fresh()
    assert parents_by_channel(fake_slack, messages) == {"incidents": 1}
    assert pages_by_key(events) == {DEFAULT_ROUTING_KEY: 1}
    assert shown["route"]["routes"] == []


def test_a_resolve_reaches_the_services_that_got_the_trigger_after_the_rules_changed(
    api, start_worker, rules_file, fake_slack, fresh, tmp_path
):
    worker = start_worker()
    post(api, page(team="payments"))
    settled(api)

    changed = tmp_path / "changed.yml"
    changed.write_text(CHANGED)
    worker.stop()
    start_worker({"INCIDENT_RULES_FILE": str(changed)})
    post(api, payload(alert("resolved", severity="critical", env="prod", team="payments")))

    def resolved():
        shown = settled(api)
        return shown if shown["status"] == "resolved" else None

    wait_for(resolved, timeout=30, what="the incident resolved and told")
    messages, events = fresh()
    assert pages_by_key(events, "resolve") == {PAYMENTS_KEY: 1, SRE_KEY: 1}
    assert pages_by_key(events) == {PAYMENTS_KEY: 1, SRE_KEY: 1}  # triggers: none to the new route
    replies = [m for m in messages if m.thread_ts is not None]
    assert {fake_slack.channel_id("payments-oncall"), fake_slack.channel_id("team-payments")} == {
        m.channel for m in replies
    }


def test_routing_keys_stay_out_of_logs_answers_and_task_arguments(api, start_worker, fresh):
    worker = start_worker()
    post(api, page(team="payments"))
    shown = settled(api)
    assert pages_by_key(fresh()[1]) == {PAYMENTS_KEY: 1, SRE_KEY: 1}

    for text in (str(shown), worker.log(), api.log()):
        assert PAYMENTS_KEY not in text and SRE_KEY not in text
    from sqlalchemy import text as sql

    from incident.db import session_scope

    with session_scope() as session:
        stored = " ".join(
            str(row)
            for query in ("SELECT destination, target, text FROM notifications",
                          "SELECT task, kwargs FROM outbox_messages")
            for row in session.execute(sql(query))
        )
    assert "PAGERDUTY_KEY_PAYMENTS" in stored
    assert PAYMENTS_KEY not in stored and SRE_KEY not in stored


@pytest.mark.parametrize("command", ["worker", "api"])
def test_a_routing_key_variable_that_is_not_set_stops_the_process_naming_it(
    env, command, tmp_path
):
    environment = {key: value for key, value in env.items() if key != "PAGERDUTY_KEY_SRE"}
    argv = ["worker", "--concurrency", "1"] if command == "worker" else ["api", "--port", "0"]
    import sys

    process = ChildProcess([sys.executable, "-m", "incident", *argv], tmp_path / "log", environment)
    try:
        wait_for(lambda: process.proc.poll() is not None, timeout=60, what=f"{command} exits")
        assert process.proc.returncode != 0
        assert "PAGERDUTY_KEY_SRE" in process.log()
    finally:
        process.stop()
