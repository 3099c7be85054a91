"""Grouping and lifecycle, applied to real PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from incident.alerts.schemas import WebhookPayload
from incident.db import engine_for, session_scope
from incident.incidents.grouping import apply_webhook
from incident.incidents.models import AlertGroup, Incident, TimelineEntry, TimelineKind
from incident.rules import load_rules
from tests.factories import T0, alert, payload

RULES = load_rules(None)


def apply(session: Session, body: dict, *, at=T0):
    change = apply_webhook(session, WebhookPayload.model_validate(body), RULES, now=at)
    session.flush()
    return change


def incidents(session: Session) -> list[Incident]:
    session.expire_all()
    return list(session.scalars(select(Incident).order_by(Incident.id)))


def kinds(session: Session, incident_id: int) -> list[str]:
    return list(
        session.scalars(
            select(TimelineEntry.kind)
            .where(TimelineEntry.incident_id == incident_id)
            .order_by(TimelineEntry.id)
        )
    )


def test_a_firing_group_opens_one_incident_classified_by_the_rules(db_session):
    change = apply(db_session, payload(alert(severity="critical", env="prod")))

    [incident] = incidents(db_session)
    assert change.incident_id == incident.id
    assert incident.severity == "SEV1"
    assert incident.status == "triggered"
    assert incident.title == "HighErrorRate api"
    assert incident.summary == "5xx above 5%"
    assert [a.fingerprint for a in incident.alerts] == [alert(severity="critical", env="prod")["fingerprint"]]
    assert kinds(db_session, incident.id) == ["opened"]


def test_the_same_notification_again_changes_nothing(db_session):
    body = payload(alert(severity="critical"))
    apply(db_session, body)
    again = apply(db_session, body, at=T0 + timedelta(minutes=5))

    assert again.duplicate and again.events == []
    [incident] = incidents(db_session)
    assert kinds(db_session, incident.id) == ["opened"]
    assert incident.updated_at == T0


def test_a_worse_alert_raises_severity_and_a_milder_one_never_lowers_it(db_session):
    first = alert(severity="warning", instance="a")
    apply(db_session, payload(first))
    worse = alert(severity="critical", instance="b")
    change = apply(db_session, payload(first, worse), at=T0 + timedelta(minutes=1))
    assert change.events == [TimelineKind.ALERT_ADDED, TimelineKind.SEVERITY_CHANGED]
    [incident] = incidents(db_session)
    assert incident.severity == "SEV2"

    # The critical alert resolves; the incident stays SEV2 while open.
    resolved_worse = alert("resolved", severity="critical", instance="b")
    apply(db_session, payload(first, resolved_worse), at=T0 + timedelta(minutes=2))
    [incident] = incidents(db_session)
    assert incident.severity == "SEV2"
    assert incident.status == "triggered"


def test_the_incident_resolves_when_every_alert_has_resolved(db_session):
    a, b = alert(instance="a"), alert(instance="b")
    apply(db_session, payload(a, b))
    apply(db_session, payload(alert("resolved", instance="a"), b), at=T0 + timedelta(minutes=1))
    [incident] = incidents(db_session)
    assert incident.status == "triggered"

    later = T0 + timedelta(minutes=2)
    apply(db_session, payload(alert("resolved", instance="b")), at=later)
    [incident] = incidents(db_session)
    assert incident.status == "resolved"
    assert incident.resolved_at == later
    assert kinds(db_session, incident.id)[-1] == "resolved"


def _fire_resolve_fire(session: Session, gap: timedelta) -> list[Incident]:
    apply(session, payload(alert()))
    apply(session, payload(alert("resolved")), at=T0 + timedelta(minutes=5))
    again = alert(starts_at=T0 + timedelta(minutes=5) + gap)
    apply(session, payload(again), at=T0 + timedelta(minutes=5) + gap)
    return incidents(session)


def test_a_group_firing_again_inside_the_reopen_window_reopens_its_incident(db_session):
    [incident] = _fire_resolve_fire(db_session, timedelta(minutes=10))
    assert incident.status == "triggered"
    assert incident.resolved_at is None
    assert kinds(db_session, incident.id) == ["opened", "resolved", "reopened"]


def test_a_group_firing_again_after_the_window_opens_a_new_incident(db_session):
    first, second = _fire_resolve_fire(db_session, RULES.maintenance.reopen_window + timedelta(minutes=1))
    assert first.status == "resolved"
    assert second.status == "triggered"
    assert first.key != second.key
    assert first.key.rsplit("-", 1)[0] == second.key.rsplit("-", 1)[0]


def test_a_group_that_keeps_resolving_and_firing_is_marked_flapping(db_session):
    at = T0
    apply(db_session, payload(alert(starts_at=at)), at=at)
    for i in range(RULES.maintenance.flapping.transitions):
        at += timedelta(minutes=2)
        if i % 2 == 0:
            apply(db_session, payload(alert("resolved", starts_at=at - timedelta(minutes=2), ends_at=at)), at=at)
        else:
            apply(db_session, payload(alert(starts_at=at)), at=at)
    [incident] = incidents(db_session)
    assert incident.flapping is True
    assert kinds(db_session, incident.id).count("flapping") == 1


def test_a_late_copy_of_a_firing_alert_does_not_reopen_a_resolved_incident(db_session):
    firing = alert()
    apply(db_session, payload(firing))
    apply(db_session, payload(alert("resolved")), at=T0 + timedelta(minutes=5))
    # A lagging HA replica delivers the old firing notification afterwards.
    apply(db_session, payload(firing, truncatedAlerts=0, externalURL="http://am-2:9093"),
          at=T0 + timedelta(minutes=6))
    [incident] = incidents(db_session)
    assert incident.status == "resolved"


def test_a_resolution_for_a_group_never_seen_firing_opens_nothing(db_session):
    change = apply(db_session, payload(alert("resolved")))
    assert change.incident_id is None
    assert incidents(db_session) == []


def test_a_group_heard_of_only_resolved_opens_when_it_fires(db_session):
    apply(db_session, payload(alert("resolved", instance="a")))
    change = apply(db_session, payload(alert(instance="a"), alert(instance="b")),
                   at=T0 + timedelta(minutes=1))

    [incident] = incidents(db_session)
    assert change.incident_id == incident.id
    assert kinds(db_session, incident.id) == ["opened"]
    group = db_session.get(AlertGroup, incident.group_id)
    assert (group.revision, group.incident_count, group.last_digest) == (2, 1, change.digest)


def test_a_new_group_stores_every_alert_and_counts_each_webhook_once(db_session):
    many = [alert(instance=f"10.0.0.{i}", severity="warning") for i in range(25)]
    first = apply(db_session, payload(*many))
    second = apply(db_session, payload(*many, alert(instance="10.0.1.1", severity="critical", env="prod")),
                   at=T0 + timedelta(minutes=1))

    [incident] = incidents(db_session)
    assert first.incident_id == second.incident_id == incident.id
    assert (first.revision, second.revision) == (1, 2)
    assert len(incident.alerts) == 26
    assert incident.severity == "SEV1"
    group = db_session.get(AlertGroup, incident.group_id)
    assert (group.revision, group.incident_count, group.last_digest) == (2, 1, second.digest)


def deliver_twice_at_once(engine, body: WebhookPayload) -> list[BaseException]:
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def deliver() -> None:
        try:
            barrier.wait()
            with session_scope(engine) as session:
                apply_webhook(session, body, RULES, now=T0)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return errors


@pytest.mark.usefixtures("clean_state")
def test_two_workers_applying_the_same_notification_at_once_make_one_incident(database_url):
    engine = engine_for(database_url)
    rounds = 10
    for n in range(rounds):
        body = WebhookPayload.model_validate(payload(alert(instance=str(n)), group_labels={"n": str(n)}))
        assert deliver_twice_at_once(engine, body) == []
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(Incident)) == rounds
        opened = session.scalar(
            select(func.count()).select_from(TimelineEntry).where(TimelineEntry.kind == "opened")
        )
        assert opened == rounds
