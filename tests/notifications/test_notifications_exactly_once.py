"""Crashes, redeliveries, duplicate tasks and concurrent beats tell nobody twice.

Each test makes the ambiguous moment happen for real: a pool process killed
while the service has acted but not yet answered, two transactions polling the
same due timer at once, a second copy of a task that already did its work.
"""

from __future__ import annotations

import signal
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from tests.conftest import wait_for
from tests.factories import alert, payload
from tests.notifications.conftest import CHANNEL
from tests.notifications.support import (
    drained,
    incident,
    ledger,
    ledger_row,
    pool_child_talking_to,
    post,
    settled,
)

pytestmark = [pytest.mark.usefixtures("clean_state", "notifying_worker"), pytest.mark.timeout(120)]

SEV3 = {"severity": "warning"}  # Slack only
SEV1 = {"severity": "critical", "env": "prod"}  # Slack and PagerDuty


@pytest.fixture
def new_parents(fake_slack):
    """Parent messages the fake Slack stored since the test began (it lives for the module)."""
    seen = {m.ts for m in fake_slack.parents(CHANNEL)}
    return lambda: [m for m in fake_slack.parents(CHANNEL) if m.ts not in seen]


@pytest.fixture
def held_replies(fake_slack, fake_pagerduty):
    """Whatever a test holds is answered afterwards, so no server thread lingers."""
    yield
    fake_slack.release_held()
    fake_pagerduty.release_held()


def _kill_the_sender(notifying_worker, fake, what: str) -> None:
    """SIGKILL the pool process whose request ``fake`` has acted on but not answered."""
    wait_for(lambda: fake.held == 1, timeout=20, what=f"{what} stored and its reply held")
    child = pool_child_talking_to(notifying_worker, fake.port)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    fake.release_held()
    wait_for(
        lambda: f"pid:{child.pid} exited with 'signal 9 (SIGKILL)'" in notifying_worker.log(),
        timeout=10, what="the worker noticing its pool process died",
    )


@pytest.mark.usefixtures("held_replies")
def test_a_worker_killed_after_slack_stored_the_parent_does_not_post_it_again(
    notifying_api, notifying_worker, fake_slack, new_parents
):
    searches = len(fake_slack.calls("conversations.history"))
    fake_slack.hold_reply_next(1)
    post(notifying_api, payload(alert(**SEV3)))
    _kill_the_sender(notifying_worker, fake_slack, "the Slack parent")

    # task_acks_late + task_reject_on_worker_lost: the pool's parent puts the
    # message back, and the same task id runs again in another pool process.
    shown = settled(notifying_api)
    [parent] = new_parents()
    row = ledger_row(shown["id"], "slack")
    assert (row["status"], row["external_id"]) == ("sent", parent.ts)
    assert row["attempts"] == 2, "the redelivered task, not a new one, finished the row"
    # The second attempt found the message in the channel's history instead of posting.
    assert len(fake_slack.calls("conversations.history")) > searches


@pytest.mark.usefixtures("held_replies")
def test_a_worker_killed_after_pagerduty_accepted_the_trigger_pages_under_one_dedup_key(
    notifying_api, notifying_worker, fake_pagerduty
):
    seen = len(fake_pagerduty.events)
    fake_pagerduty.hold_reply_next(1)
    post(notifying_api, payload(alert(**SEV1)))
    _kill_the_sender(notifying_worker, fake_pagerduty, "the PagerDuty trigger")

    shown = settled(notifying_api)
    triggers = [e for e in fake_pagerduty.events[seen:] if e["event_action"] == "trigger"]
    # PagerDuty cannot be asked what it already has, so the redelivered task
    # sends the trigger again. With the same dedup_key, PagerDuty folds the
    # second into the alert the first opened: one page, not two. (Here the
    # killed request had always reached the fake, hence two events.)
    assert len(triggers) in (1, 2)
    assert {e["dedup_key"] for e in triggers} == {shown["key"]}
    row = ledger_row(shown["id"], "pagerduty")
    assert (row["status"], row["external_id"], row["attempts"]) == ("sent", shown["key"], 2)


def test_a_slack_reply_lost_to_a_timeout_does_not_post_the_parent_again(
    notifying_api, fake_slack, new_parents, held_replies
):
    """The commonest "sent but unconfirmed": Slack stored the message, the answer
    never came back, and the client timed out (slack_sdk's timeout is 10 s)."""
    fake_slack.hold_reply_next(1, seconds=15)
    post(notifying_api, payload(alert(**SEV3)))
    wait_for(lambda: fake_slack.held == 1, timeout=20, what="the Slack parent stored, reply held")

    shown = settled(notifying_api, timeout=40)
    time.sleep(1)
    parents = new_parents()
    assert len(parents) == 1, (
        "the retry after a timeout posted the parent again: "
        f"{[(m.ts, m.metadata['event_payload']['ledger_id']) for m in parents]}"
    )
    [parent] = parents
    row = ledger_row(shown["id"], "slack")
    assert (row["status"], row["external_id"]) == ("sent", parent.ts)


def _set_timer_due(incident_id: int) -> None:
    from incident.db import session_scope
    from incident.notifications.models import EscalationTimer

    with session_scope() as session:
        session.execute(
            update(EscalationTimer)
            .where(EscalationTimer.incident_id == incident_id)
            .values(due_at=datetime.now(UTC) - timedelta(seconds=1))
        )


def _escalated_steps(incident_id: int) -> list[int]:
    from incident.db import session_scope
    from incident.incidents.models import TimelineEntry

    with session_scope() as session:
        details = session.scalars(
            select(TimelineEntry.detail)
            .where(TimelineEntry.incident_id == incident_id, TimelineEntry.kind == "escalated")
            .order_by(TimelineEntry.id)
        ).all()
    return [d["step"] for d in details]


def _two_beats_at_once(rules, channels) -> list[int]:
    """The body of ``fire_escalations`` in two transactions that both poll before
    either commits: what two beats (or two overlapping polls) do. Each commit
    sends its outbox messages to the broker, as a worker's would."""
    from incident.db import session_scope
    from incident.incidents import outbox
    from incident.incidents.events import EventBus
    from incident.incidents.lifecycle import Lifecycle
    from incident.notifications import timers
    from incident.notifications.ledger import NotificationPlanner
    from incident.worker.app import publish

    outbox.install_publisher(publish)
    events = EventBus(NotificationPlanner(rules, channels))
    polled = threading.Barrier(2, timeout=10)
    results: list[int] = [0, 0]
    errors: list[BaseException] = []

    def beat(slot: int) -> None:
        try:
            now = datetime.now(UTC)
            with session_scope() as session:
                with Lifecycle(session, events=events, now=now) as life:
                    results[slot] = timers.fire_due(session, rules, life)
                try:
                    # Hold this transaction open until the other one has polled too.
                    polled.wait(timeout=3)
                except threading.BrokenBarrierError:
                    pass  # the other blocked on our lock: also safe, and it shows below
        except BaseException as exc:  # handed to the test thread, which fails on it
            errors.append(exc)

    threads = [threading.Thread(target=beat, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a beat hung"
    assert not errors, errors
    return results


def test_two_beats_polling_at_once_escalate_each_step_once(
    notifying_api, fake_pagerduty, notify_env, fake_slack
):
    from incident.notifications.planning import Channels
    from incident.rules import load_rules

    rules = load_rules(notify_env["INCIDENT_RULES_FILE"])
    channels = Channels(slack=True, slack_default_channel=fake_slack.channel_id(CHANNEL), pagerduty=True)
    seen = len(fake_pagerduty.events)
    post(notifying_api, payload(alert(**SEV1)))
    shown = settled(notifying_api)

    for step in (1, 2, 3):  # the rules' SEV1 repeat is 2: a third poll finds nothing
        _set_timer_due(shown["id"])
        first, second = _two_beats_at_once(rules, channels)
        assert not (first and second), f"both beats fired step {step}"
        assert _escalated_steps(shown["id"]) == [1, 2][:step]

    settled(notifying_api)
    escalations = [r for r in ledger(shown["id"]) if r["action"] == "escalate"]
    assert sorted((r["channel"], r["status"]) for r in escalations) == [
        ("pagerduty", "sent"), ("pagerduty", "sent"), ("slack", "sent"), ("slack", "sent"),
    ]
    actions = [e["event_action"] for e in fake_pagerduty.events[seen:]]
    assert actions == ["trigger", "trigger", "trigger"]  # the opening, then one per step


def test_a_duplicate_deliver_task_for_a_sent_row_sends_nothing(
    notifying_api, notifying_worker, fake_slack, fake_pagerduty, redis_client
):
    from incident.worker import app

    post(notifying_api, payload(alert(**SEV1)))
    shown = settled(notifying_api)
    before = ledger(shown["id"])
    assert {(r["channel"], r["status"]) for r in before} == {("slack", "sent"), ("pagerduty", "sent")}
    slack_seen, pagerduty_seen = len(fake_slack.requests), len(fake_pagerduty.requests)

    task_ids = [
        app.send_task(
            "incident.notifications.deliver", kwargs={"notification_id": row["id"]},
            queue="page" if row["priority"] else "notify",
        ).id
        for row in before
    ]
    for task_id in task_ids:
        wait_for(
            lambda task_id=task_id: f"deliver[{task_id}] succeeded" in notifying_worker.log(),
            timeout=20, what=f"the duplicate task {task_id} done",
        )
    finished = [ln for ln in notifying_worker.log().splitlines() if "deliver[" in ln and "succeeded" in ln]
    for task_id in task_ids:
        [line] = [ln for ln in finished if f"deliver[{task_id}]" in ln]
        assert "'skipped'" in line, line
    wait_for(lambda: drained(redis_client), what="queues drained")

    assert fake_slack.requests[slack_seen:] == []
    assert fake_pagerduty.requests[pagerduty_seen:] == []
    assert ledger(shown["id"]) == before
    assert incident(notifying_api, shown["id"])["notifications"] == shown["notifications"]
