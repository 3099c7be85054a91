"""Holding incidents back under maintenance windows and letting them go, in-process on the real
PostgreSQL: the ledger rows, remediation runs and timers that the worker would act on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from incident.db import session_scope
from incident.incidents import store
from incident.incidents.lifecycle import API
from incident.incidents.models import TimelineEntry, TimelineKind
from incident.integrations.alertmanager import Alertmanager
from incident.models import EscalationTimer, Incident, MaintenanceWindow, Notification, RemediationRun
from incident.windows import service
from incident.windows.schemas import WindowRequest
from incident.windows.suppression import release_ended
from tests.factories import T0
from tests.windows.conftest import apply, held_back, open_incident, release_at, webhook

pytestmark = [pytest.mark.usefixtures("clean_state"), pytest.mark.timeout(120)]

HOUR = timedelta(hours=1)


def make_window(*matchers: str, start: timedelta = timedelta(0), length: timedelta = HOUR,
                alertmanager: Alertmanager | None = None) -> MaintenanceWindow:
    now = datetime.now(UTC)
    request = WindowRequest.model_validate({
        "matchers": list(matchers), "starts_at": (now + start).isoformat(),
        "ends_at": (now + start + length).isoformat(), "comment": "db upgrade",
    })
    with session_scope() as session:
        window = service.create_window(session, request, API, now=now, alertmanager=alertmanager)
        session.expunge(window)
    return window


def end_early(window: MaintenanceWindow) -> datetime:
    now = datetime.now(UTC)
    with session_scope() as session:
        service.end_window(session, window.id, now=now, alertmanager=None)
    return now


def ledger(incident_id: int) -> list[tuple[str, str]]:
    with session_scope() as session:
        rows = session.scalars(
            select(Notification).where(Notification.incident_id == incident_id)
            .order_by(Notification.id)
        )
        return [(row.channel, row.action) for row in rows]


def runs(incident_id: int) -> list[str]:
    with session_scope() as session:
        return list(session.scalars(
            select(RemediationRun.name).where(RemediationRun.incident_id == incident_id)
        ))


def timer_armed(incident_id: int) -> bool:
    with session_scope() as session:
        timer = session.scalars(
            select(EscalationTimer).where(EscalationTimer.incident_id == incident_id)
        ).one_or_none()
        return timer is not None and timer.active


def maintenance_entries(incident_id: int) -> list[dict]:
    with session_scope() as session:
        return list(session.scalars(
            select(TimelineEntry.detail)
            .where(TimelineEntry.incident_id == incident_id,
                   TimelineEntry.kind == TimelineKind.MAINTENANCE)
            .order_by(TimelineEntry.id)
        ))


OPENING = [("slack", "trigger"), ("pagerduty", "trigger")]


def test_an_incident_opened_under_a_window_is_recorded_but_told_nobody(local):
    window = make_window('service="db"')
    held = open_incident(local, service="db", alertname="DiskFull")
    told = open_incident(local, service="api", alertname="DiskFull")

    assert held_back() == [held]
    assert maintenance_entries(held) == [{"by": "maintenance", "windows": [window.id]}]
    assert ledger(held) == []
    assert runs(held) == []
    assert not timer_armed(held)
    # The same moment, labels no window matches: told as ever.
    assert ledger(told) == OPENING
    assert timer_armed(told)


def test_the_end_of_the_window_tells_it_once_as_if_it_had_just_opened(local):
    window = make_window('service="db"')
    held = open_incident(local, service="db")

    assert release_at(local, window.ends_at - timedelta(seconds=1)) == 0
    assert ledger(held) == [] and held_back() == [held]

    assert release_at(local, window.ends_at) == 1
    assert ledger(held) == OPENING
    assert runs(held) == ["restart-db"]
    assert timer_armed(held)
    assert maintenance_entries(held)[-1] == {"by": "maintenance", "ended": True, "opening": "opened"}
    assert held_back() == []

    assert release_at(local, window.ends_at + HOUR) == 0
    assert ledger(held) == OPENING
    assert runs(held) == ["restart-db"]


def test_two_polls_at_once_release_it_once(local):
    window = make_window('service="db"')
    held = open_incident(local, service="db")
    after = window.ends_at + timedelta(seconds=1)

    with session_scope() as first:
        assert release_ended(first, local.events, now=after) == 1
        # The first poll holds the row lock, uncommitted: the second skips the incident.
        assert release_at(local, after) == 0
    assert release_at(local, after) == 0
    assert ledger(held) == OPENING
    assert runs(held) == ["restart-db"]


def test_overlapping_windows_hold_it_until_the_last_one_ends(local):
    by_service = make_window('service="db"')
    by_name = make_window('alertname=~"Disk.*"', length=2 * HOUR)
    held = open_incident(local, service="db", alertname="DiskFull")
    assert maintenance_entries(held) == [{"by": "maintenance",
                                          "windows": [by_service.id, by_name.id]}]

    end_early(by_service)
    assert release_at(local, datetime.now(UTC)) == 0
    assert release_at(local, by_service.ends_at + timedelta(minutes=1)) == 0
    assert ledger(held) == [] and held_back() == [held]

    assert release_at(local, by_name.ends_at) == 1
    assert ledger(held) == OPENING


def test_a_window_ended_early_releases_at_once(local):
    window = make_window('service="db"')
    held = open_incident(local, service="db")
    release_at(local, datetime.now(UTC))
    assert ledger(held) == []

    ended = end_early(window)
    assert release_at(local, ended) == 1
    assert ledger(held) == OPENING


def test_an_incident_resolved_during_the_window_is_never_told(local):
    window = make_window('service="db"')
    held = open_incident(local, service="db")
    with session_scope() as session:
        store.transition_by_hand(session, held, TimelineKind.RESOLVED, API, events=local.events)
    assert ledger(held) == []

    assert release_at(local, window.ends_at) == 1
    assert ledger(held) == []
    assert runs(held) == []
    assert not timer_armed(held)
    assert maintenance_entries(held)[-1] == {"by": "maintenance", "ended": True}
    assert held_back() == []


def test_an_acknowledged_one_is_told_at_the_end_but_no_timer_runs_for_it(local):
    window = make_window('service="db"')
    held = open_incident(local, service="db")
    with session_scope() as session:
        store.transition_by_hand(session, held, TimelineKind.ACKNOWLEDGED, API, events=local.events)
    assert ledger(held) == []

    release_at(local, window.ends_at)
    assert ledger(held) == OPENING
    assert not timer_armed(held)


def test_a_reopening_after_the_window_ended_is_told_even_before_the_poll(local):
    window = make_window('service="db"')
    held = open_incident(local, service="db")
    apply(local, webhook("resolved", service="db"))
    assert held_back() == [held]  # resolved under the window, not released yet

    # The window is over, and no poll has run since: the reopening is told as usual.
    with session_scope() as session:
        session.execute(
            update(MaintenanceWindow).where(MaintenanceWindow.id == window.id)
            .values(starts_at=window.starts_at - HOUR, ends_at=window.starts_at)
        )
    assert apply(local, webhook(service="db", starts_at=T0 + HOUR)) == held
    with session_scope() as session:
        assert session.get(Incident, held).status == "triggered"
    assert held_back() == []
    assert ledger(held) == OPENING
    assert release_at(local, datetime.now(UTC)) == 0
    assert ledger(held) == OPENING


def test_windows_not_yet_started_or_already_ended_hold_nothing(local):
    make_window('service="db"', start=HOUR)
    end_early(make_window('service="db"'))
    told = open_incident(local, service="db")
    assert held_back() == []
    assert ledger(told) == OPENING


def test_nothing_stays_in_maintenance_once_every_window_is_over(local):
    """Many incidents under overlapping windows, some resolved, some acknowledged, one
    window ended early: at a time past every end, none is held back and none was
    told more than once."""
    windows = [
        make_window('service="db"'),
        make_window('service=~"db|cache"', start=timedelta(0), length=3 * HOUR),
        make_window('alertname="DiskFull"', length=2 * HOUR),
        make_window('env!="prod"', 'service!=""', length=HOUR / 2),
    ]
    end_early(windows[0])
    ids = [open_incident(local, service=service, alertname=name, env=env)
           for service in ("db", "cache", "api")
           for name in ("DiskFull", "HighErrorRate")
           for env in ("prod", "staging")]
    # Only api/HighErrorRate/prod falls under no window: told at once.
    assert len(held_back()) == 11
    with session_scope() as session:
        store.transition_by_hand(session, ids[0], TimelineKind.RESOLVED, API, events=local.events)
        store.transition_by_hand(session, ids[1], TimelineKind.ACKNOWLEDGED, API, events=local.events)

    for step in (timedelta(minutes=31), 2 * HOUR + timedelta(minutes=1), 3 * HOUR + timedelta(minutes=1)):
        release_at(local, windows[0].created_at + step)
    assert held_back() == []
    for incident_id in ids:
        expected = [] if incident_id == ids[0] else OPENING
        assert ledger(incident_id) == expected, incident_id


def test_beat_polls_for_ended_windows_as_often_as_for_escalations(local):
    from incident.windows.suppression import RELEASE_TASK
    from incident.worker.app import beat_schedule
    from incident.worker.routes import PAGE, TASK_ROUTES

    entry = beat_schedule(local.settings)["release-maintenance"]
    assert entry == {"task": RELEASE_TASK, "schedule": local.settings.escalation_poll_seconds}
    assert TASK_ROUTES[RELEASE_TASK] == {"queue": PAGE}
