"""A due escalation timer and a person resolving by hand, at the same moment,
neither deadlock nor fire a step twice.

Both sides take the incident's lock and the timer's: a resolve disarms the
timer under the incident's lock, and a beat firing the timer must take them in
that same order. Each test makes the two transactions overlap for real, in
PostgreSQL, the resolve first or the beat first.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text, update

from incident.alerts.schemas import WebhookPayload
from incident.db import engine_for, session_scope
from incident.incidents import store
from incident.incidents.events import EventBus
from incident.incidents.grouping import apply_webhook
from incident.incidents.lifecycle import API, Lifecycle
from incident.incidents.models import Incident, TimelineEntry, TimelineKind
from incident.notifications import timers
from incident.notifications.ledger import NotificationPlanner
from incident.notifications.models import EscalationTimer
from incident.notifications.planning import Channels
from incident.rules import load_rules
from tests.conftest import wait_for
from tests.factories import alert, payload

pytestmark = [pytest.mark.usefixtures("clean_state"), pytest.mark.timeout(60)]

RULES = load_rules(None)  # SEV1: ack_timeout 5m, repeated 3 times
EVENTS = EventBus(NotificationPlanner(RULES, Channels(False, None, False)))


def sev1_incident_with_a_due_timer() -> int:
    body = payload(alert(severity="critical", env="prod"))
    with session_scope() as session:
        change = apply_webhook(session, WebhookPayload.model_validate(body), RULES, events=EVENTS)
    with session_scope() as session:
        armed = session.execute(
            update(EscalationTimer)
            .where(EscalationTimer.incident_id == change.incident_id, EscalationTimer.active)
            .values(due_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        assert armed.rowcount == 1
    return change.incident_id


def waiting_on_a_lock(database_url: str) -> int:
    with engine_for(database_url).connect() as conn:
        return conn.scalar(text(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ))


def beat() -> int:
    with session_scope() as session, Lifecycle(session, events=EVENTS) as life:
        return timers.fire_due(session, RULES, life)


def escalations(incident_id: int) -> int:
    with session_scope() as session:
        return len(session.scalars(
            select(TimelineEntry.id).where(
                TimelineEntry.incident_id == incident_id,
                TimelineEntry.kind == TimelineKind.ESCALATED,
            )
        ).all())


def state(incident_id: int) -> tuple[str, bool]:
    with session_scope() as session:
        incident = session.get(Incident, incident_id)
        timer = session.scalars(
            select(EscalationTimer).where(EscalationTimer.incident_id == incident_id)
        ).one()
        return incident.status, timer.active


class Overlap:
    """Runs ``first`` holding the incident's lock until ``second`` has started and
    either finished or is waiting on a lock; collects what each returned or raised."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.results: dict[str, object] = {}
        self.errors: list[BaseException] = []
        self.holding = threading.Event()
        self.go_on = threading.Event()
        self.second_done = threading.Event()

    def run(self, first, second) -> None:
        threads = [
            threading.Thread(target=self._first, args=(first,)),
            threading.Thread(target=self._second, args=(second,)),
        ]
        for thread in threads:
            thread.start()
        self.holding.wait(timeout=10)
        wait_for(lambda: self.second_done.is_set() or waiting_on_a_lock(self.database_url),
                 timeout=10, what="the second transaction blocked or done")
        self.go_on.set()
        for thread in threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in threads), "a transaction hung"

    def _first(self, first) -> None:
        try:
            self.results["first"] = first(self)
        except BaseException as exc:  # handed to the test thread, which fails on it
            self.errors.append(exc)
            self.holding.set()

    def _second(self, second) -> None:
        try:
            self.holding.wait(timeout=10)
            self.results["second"] = second()
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            self.second_done.set()


def test_a_resolve_by_hand_holding_the_incident_and_a_due_timer_do_not_deadlock(database_url):
    incident_id = sev1_incident_with_a_due_timer()

    def resolve_by_hand(overlap: Overlap) -> None:
        with session_scope() as session:
            # What the API's resolve locks first; the beat then starts.
            session.get(Incident, incident_id, with_for_update=True)
            overlap.holding.set()
            overlap.go_on.wait(timeout=10)
            store.transition_by_hand(session, incident_id, TimelineKind.RESOLVED, API,
                                     events=EVENTS)

    overlap = Overlap(database_url)
    overlap.run(resolve_by_hand, beat)

    assert not overlap.errors, overlap.errors
    assert state(incident_id) == ("resolved", False)
    # The beat stepped aside; the resolved incident is not escalated afterwards.
    assert overlap.results["second"] == 0
    assert escalations(incident_id) == 0
    assert beat() == 0


def test_a_due_timer_firing_while_a_resolve_waits_fires_its_step_once(database_url):
    incident_id = sev1_incident_with_a_due_timer()

    def fire_and_hold(overlap: Overlap) -> int:
        with session_scope() as session, Lifecycle(session, events=EVENTS) as life:
            fired = timers.fire_due(session, RULES, life)
            overlap.holding.set()
            overlap.go_on.wait(timeout=10)
        return fired

    def resolve() -> None:
        with session_scope() as session:
            store.transition_by_hand(session, incident_id, TimelineKind.RESOLVED, API,
                                     events=EVENTS)

    overlap = Overlap(database_url)
    overlap.run(fire_and_hold, resolve)

    assert not overlap.errors, overlap.errors
    assert overlap.results["first"] == 1
    assert escalations(incident_id) == 1
    assert state(incident_id) == ("resolved", False)
    assert beat() == 0
