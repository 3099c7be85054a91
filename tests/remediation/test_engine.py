"""The remediation engine on real PostgreSQL and Redis, against a local HTTP target.

Attempts are driven by hand here (the engine says what to enqueue and when);
tests/remediation/test_remediation_worker.py runs the same through real workers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from incident.db import session_scope
from incident.incidents.events import EventBus
from incident.incidents.grouping import GroupChange
from incident.incidents.ingest import ingest_payload
from incident.incidents.models import Incident, TimelineEntry
from incident.incidents.outbox import OutboxMessage
from incident.incidents.repeats import RepeatCache
from incident.notifications.ledger import NotificationPlanner
from incident.notifications.models import Notification
from incident.notifications.planning import Channels
from incident.remediation.breaker import CircuitBreakers
from incident.remediation.engine import (
    OVERDUE,
    RUN_TASK,
    SOFT_LIMIT_MARGIN,
    Attempt,
    RemediationEngine,
    RemediationScheduler,
    Step,
)
from incident.remediation.models import RemediationRun, RunStatus
from incident.rules import parse_rules
from tests import factories
from tests.remediation.target import FakeTarget

SLACK = Channels(slack=True, slack_default_channel="C1", pagerduty=False)
PUBLIC_URL = "http://127.0.0.1:8080"


@pytest.fixture
def target() -> Iterator[FakeTarget]:
    with FakeTarget() as fake:
        yield fake


def rules_for(target: FakeTarget, **policy: str):
    settings = {
        "attempts": "4", "backoff": "1s", "max_backoff": "10s", "threshold": "3",
        "reset_after": "5m", "on_failure": "notify", "run_on_reopen": "false", "key": "",
    } | policy
    key = f", key: '{settings['key']}'" if settings["key"] else ""
    return parse_rules(f"""
maintenance: {{reopen_window: 30m}}
remediations:
  - name: restart-api
    matchers: ['alertname="HighErrorRate"']
    action: http
    with:
      method: POST
      url: "{target.url}/services/{{labels.service}}/restart"
      timeout: 5s
    retry: {{attempts: {settings['attempts']}, backoff: {settings['backoff']}, max_backoff: {settings['max_backoff']}}}
    circuit_breaker: {{failure_threshold: {settings['threshold']}, reset_after: {settings['reset_after']}{key}}}
    on_failure: {settings['on_failure']}
    run_on_reopen: {settings['run_on_reopen']}
""")


@dataclass
class Ingested:
    """What one webhook changed, and the remediation attempts its commit put in the outbox."""

    change: GroupChange
    remediations: list[Attempt]

    @property
    def incident_id(self) -> int | None:
        return self.change.incident_id

    @property
    def events(self) -> list:
        return self.change.events


def last_outbox_id() -> int:
    with session_scope() as session:
        return session.scalar(select(func.coalesce(func.max(OutboxMessage.id), 0)))


def attempts_sent_after(mark: int) -> list[Attempt]:
    """The remediation attempts committed to the outbox after row ``mark``."""
    with session_scope() as session:
        rows = session.scalars(
            select(OutboxMessage)
            .where(OutboxMessage.id > mark, OutboxMessage.task == RUN_TASK)
            .order_by(OutboxMessage.id)
        ).all()
        return [
            Attempt(
                row.kwargs["run_id"], row.kwargs["attempt"],
                (row.not_before - row.created_at).total_seconds(),
                row.options["soft_time_limit"] - SOFT_LIMIT_MARGIN,
            )
            for row in rows
        ]


class Harness:
    def __init__(self, rules, redis_client) -> None:
        self.rules = rules
        self.repeats = RepeatCache(redis_client)
        self.events = EventBus(
            NotificationPlanner(rules, SLACK), RemediationScheduler(rules, PUBLIC_URL)
        )
        self.engine = RemediationEngine(
            rules, CircuitBreakers(redis_client), events=self.events, public_url=PUBLIC_URL
        )

    def ingest(self, raw: dict) -> Ingested:
        mark = last_outbox_id()
        change = ingest_payload(raw, rules=self.rules, repeats=self.repeats, events=self.events)
        assert change is not None
        return Ingested(change, attempts_sent_after(mark))

    def open(self, service: str = "api", **labels: str) -> Ingested:
        return self.ingest(factories.payload(factories.alert(service=service, **labels)))

    def run_to_the_end(self, change: Ingested) -> list[Step]:
        """Every attempt in turn, as workers would, ignoring the countdowns."""
        steps: list[Step] = []
        pending = list(change.remediations)
        while pending:
            attempt = pending.pop(0)
            step = self.engine.run_attempt(attempt.run_id, attempt.attempt)
            steps.append(step)
            pending += step.next_attempts
        return steps


def runs() -> list[RemediationRun]:
    with session_scope() as session:
        return list(session.scalars(select(RemediationRun).order_by(RemediationRun.id)))


def timeline(incident_id: int, kind: str) -> list[dict]:
    with session_scope() as session:
        return [
            entry.detail
            for entry in session.scalars(
                select(TimelineEntry)
                .where(TimelineEntry.incident_id == incident_id, TimelineEntry.kind == kind)
                .order_by(TimelineEntry.id)
            )
        ]


def notifications(incident_id: int) -> list[tuple[str, str | None]]:
    with session_scope() as session:
        return [
            (row.action, row.text)
            for row in session.scalars(
                select(Notification).where(Notification.incident_id == incident_id)
                .order_by(Notification.id)
            )
        ]


def incident(incident_id: int) -> Incident:
    with session_scope() as session:
        return session.get(Incident, incident_id)


def test_an_opening_schedules_one_run_per_matching_remediation_and_a_resend_none(
    clean_state, redis_client, target
):
    harness = Harness(rules_for(target), redis_client)
    first = harness.open()
    assert [a.attempt for a in first.remediations] == [1]
    harness.repeats.client.flushdb()  # the slow path: the group row decides
    again = harness.open()
    assert again.remediations == []
    (run,) = runs()
    assert (run.name, run.status, run.attempts, run.max_attempts) == ("restart-api", "pending", 0, 4)


def test_reopening_runs_again_only_when_the_rule_says_so(clean_state, redis_client, target):
    for run_on_reopen, expected in (("false", 1), ("true", 2)):
        harness = Harness(rules_for(target, run_on_reopen=run_on_reopen), redis_client)
        firing = factories.alert(service=f"svc-{run_on_reopen}")
        harness.ingest(factories.payload(firing))
        harness.ingest(factories.payload(factories.alert("resolved", service=f"svc-{run_on_reopen}")))
        later = factories.alert(
            service=f"svc-{run_on_reopen}", starts_at=factories.T0 + timedelta(minutes=10)
        )
        change = harness.ingest(factories.payload(later))
        assert "reopened" in change.events
        mine = [r for r in runs() if r.incident_id == change.incident_id]
        assert len(mine) == expected


def test_a_target_that_fails_twice_is_retried_with_growing_delays_then_succeeds(
    clean_state, redis_client, target
):
    harness = Harness(rules_for(target, backoff="1s"), redis_client)
    target.fail_next(2, status=500)
    change = harness.open()
    steps = harness.run_to_the_end(change)

    countdowns = [s.next_attempts[0].countdown for s in steps if s.next_attempts]
    assert len(countdowns) == 2
    assert 0.5 <= countdowns[0] <= 1.0 and 1.0 <= countdowns[1] <= 2.0
    assert [s.status for s in steps] == ["pending", "pending", "succeeded"]
    assert [r.method for r in target.requests] == ["/services/api/restart"] * 3

    (run,) = runs()
    assert (run.status, run.attempts, run.last_error) == ("succeeded", 3, None)
    assert run.started_at <= run.finished_at
    entries = timeline(change.incident_id, "remediation")
    assert [e["status"] for e in entries] == ["retrying", "retrying", "succeeded"]
    assert "HTTP 500" in entries[0]["error"]
    assert entries[0]["retry_in"] <= entries[1]["retry_in"]


def test_a_duplicate_message_for_an_attempt_does_not_run_it_again(
    clean_state, redis_client, target
):
    harness = Harness(rules_for(target), redis_client)
    (attempt,) = harness.open().remediations
    assert harness.engine.run_attempt(attempt.run_id, 1).status == "succeeded"
    assert harness.engine.run_attempt(attempt.run_id, 1).status is None
    assert harness.engine.run_attempt(attempt.run_id, 2).status is None
    assert len(target.requests) == 1


def test_on_failure_notify_records_and_replies_in_the_thread(clean_state, redis_client, target):
    harness = Harness(rules_for(target, attempts="2", backoff="1s"), redis_client)
    target.failing = True
    change = harness.open()
    harness.run_to_the_end(change)
    (run,) = runs()
    assert (run.status, run.attempts) == ("failed", 2)
    assert "HTTP 503" in run.last_error and "still broken" in (run.output or "")
    replies = [text for action, text in notifications(change.incident_id) if action == "update"]
    assert replies == [f"Remediation restart-api failed after 2 attempts: {run.last_error}"]
    assert incident(change.incident_id).severity == "SEV3"


def test_on_failure_ignore_only_records(clean_state, redis_client, target):
    harness = Harness(rules_for(target, attempts="1", on_failure="ignore"), redis_client)
    target.failing = True
    change = harness.open()
    before = notifications(change.incident_id)
    harness.run_to_the_end(change)
    assert runs()[0].status == "failed"
    assert [e["status"] for e in timeline(change.incident_id, "remediation")] == ["failed"]
    assert notifications(change.incident_id) == before


def test_on_failure_escalate_raises_one_severity_and_escalates_now(
    clean_state, redis_client, target
):
    harness = Harness(rules_for(target, attempts="1", on_failure="escalate"), redis_client)
    target.failing = True
    change = harness.open()
    assert incident(change.incident_id).severity == "SEV3"
    harness.run_to_the_end(change)
    assert incident(change.incident_id).severity == "SEV2"
    (raised,) = timeline(change.incident_id, "severity_changed")
    assert raised == {
        "from": "SEV3", "to": "SEV2", "by": "system", "reason": "remediation restart-api failed"
    }
    (escalated,) = timeline(change.incident_id, "escalated")
    assert "restart-api" in escalated["reason"]
    actions = [action for action, _ in notifications(change.incident_id)]
    assert "escalate" in actions


def test_a_failing_target_opens_the_breaker_then_incidents_skip_it_and_escalate_at_once(
    clean_state, redis_client, target
):
    harness = Harness(
        rules_for(target, attempts="1", threshold="2", reset_after="1s", on_failure="escalate"),
        redis_client,
    )
    target.failing = True
    for service in ("a", "b"):
        harness.run_to_the_end(harness.open(service))
    assert len(target.requests) == 2

    skipped = harness.open("c")
    harness.run_to_the_end(skipped)
    assert len(target.requests) == 2, "an open breaker must keep the target untouched"
    run = runs()[-1]
    assert (run.status, run.attempts) == ("skipped_circuit_open", 0)
    assert run.last_error.startswith("circuit breaker open until ")
    assert incident(skipped.incident_id).severity == "SEV2"

    # After reset_after one trial goes through; its success closes the breaker.
    target.failing = False
    time.sleep(1.1)
    harness.run_to_the_end(harness.open("d"))
    harness.run_to_the_end(harness.open("e"))
    assert [r.status for r in runs()[-2:]] == ["succeeded", "succeeded"]
    assert len(target.requests) == 4
    (state,) = harness.engine.breakers.states()
    assert state["state"] == "closed"


def test_the_breaker_is_per_target_when_the_rule_keys_it(clean_state, redis_client, target):
    harness = Harness(
        rules_for(target, attempts="1", threshold="1", key="{labels.service}"), redis_client
    )
    target.failing = True
    harness.run_to_the_end(harness.open("api"))
    second_api = factories.payload(
        factories.alert(service="api", instance="2"),
        group_labels={"alertname": "HighErrorRate", "service": "api", "instance": "2"},
    )
    harness.run_to_the_end(harness.ingest(second_api))
    harness.run_to_the_end(harness.open("db"))
    assert [r.status for r in runs()] == ["failed", "skipped_circuit_open", "failed"]
    assert [r.breaker_key for r in runs()] == ["api", "api", "db"]


def test_an_incident_resolved_before_the_next_attempt_cancels_the_run(
    clean_state, redis_client, target
):
    harness = Harness(rules_for(target), redis_client)
    target.fail_next(1, status=500)
    change = harness.open()
    (first,) = change.remediations
    step = harness.engine.run_attempt(first.run_id, 1)
    harness.ingest(factories.payload(factories.alert("resolved")))
    (retry,) = step.next_attempts
    assert harness.engine.run_attempt(retry.run_id, retry.attempt).status is None
    run = runs()[0]
    assert (run.status, run.attempts) == ("cancelled", 1)
    assert len(target.requests) == 1
    # Nothing to tell anyone: the problem went away.
    assert not any("Remediation" in (text or "") for _, text in notifications(change.incident_id))


def test_an_attempt_whose_worker_died_is_counted_failed_by_the_sweeper_and_retried(
    clean_state, redis_client, target
):
    harness = Harness(rules_for(target), redis_client)
    (first,) = harness.open().remediations
    with session_scope() as session:
        # As a worker leaves it when SIGKILLed mid-attempt: running, lease past.
        session.execute(
            update(RemediationRun)
            .where(RemediationRun.id == first.run_id)
            .values(status=RunStatus.RUNNING, attempts=1,
                    lease_until=datetime.now(UTC) - timedelta(seconds=1))
        )
    step = harness.engine.sweep()
    (retry,) = step.next_attempts
    assert (retry.run_id, retry.attempt) == (first.run_id, 2)
    run = runs()[0]
    assert (run.status, run.last_error) == ("pending", "worker lost during attempt 1")
    # The late outcome of the lost attempt is not recorded over the retry.
    assert harness.engine.run_attempt(first.run_id, 1).status is None
    assert harness.engine.run_attempt(retry.run_id, 2).status == "succeeded"


def test_the_sweeper_resends_a_pending_attempt_nobody_took(clean_state, redis_client, target):
    harness = Harness(rules_for(target), redis_client)
    (first,) = harness.open().remediations
    assert harness.engine.sweep().next_attempts == []
    with session_scope() as session:
        session.execute(
            update(RemediationRun).values(
                next_attempt_at=datetime.now(UTC) - OVERDUE - timedelta(minutes=1)
            )
        )
    (again,) = harness.engine.sweep().next_attempts
    assert (again.run_id, again.attempt) == (first.run_id, 1)
    assert harness.engine.sweep().next_attempts == [], "stamped: sent once per OVERDUE"


def test_a_run_whose_remediation_left_the_rules_fails_with_a_clear_error(
    clean_state, redis_client, target
):
    (attempt,) = Harness(rules_for(target), redis_client).open().remediations
    other = Harness(parse_rules("remediations: []"), redis_client)
    other.engine.run_attempt(attempt.run_id, 1)
    run = runs()[0]
    assert run.status == "failed"
    assert run.last_error == "remediation 'restart-api' is no longer in the rules file"
    assert target.requests == []


def test_the_breaker_counts_runs_not_attempts_and_a_half_open_trial_gets_one_attempt(
    clean_state, redis_client, target
):
    harness = Harness(
        rules_for(target, attempts="3", backoff="1s", threshold="2", reset_after="1s"),
        redis_client,
    )
    # One run failing all three attempts is one failure: the breaker stays closed.
    target.failing = True
    harness.run_to_the_end(harness.open("a"))
    assert runs()[-1].attempts == 3
    assert harness.engine.breakers.states()[0]["state"] == "closed"
    harness.run_to_the_end(harness.open("b"))
    assert harness.engine.breakers.states()[0]["state"] == "open"

    time.sleep(1.1)
    before = len(target.requests)
    harness.run_to_the_end(harness.open("c"))
    trial = runs()[-1]
    assert (trial.status, trial.attempts) == ("failed", 1), "a trial is one attempt"
    assert len(target.requests) == before + 1
    assert harness.engine.breakers.states()[0]["state"] == "open"


def test_a_long_backoff_waits_as_a_row_for_the_sweeper_not_as_a_broker_eta(
    clean_state, redis_client, target
):
    harness = Harness(rules_for(target, backoff="4m", max_backoff="10m"), redis_client)
    target.fail_next(1, status=500)
    (first,) = harness.open().remediations
    step = harness.engine.run_attempt(first.run_id, 1)
    assert step.status == "pending" and step.next_attempts == []
    assert harness.engine.sweep().next_attempts == [], "not due yet"
    with session_scope() as session:
        session.execute(update(RemediationRun).values(next_attempt_at=datetime.now(UTC)))
    (due,) = harness.engine.sweep().next_attempts
    assert (due.run_id, due.attempt, due.countdown) == (first.run_id, 2, 0.0)
    assert harness.engine.sweep().next_attempts == [], "sent once"
    assert harness.engine.run_attempt(due.run_id, 2).status == "succeeded"
