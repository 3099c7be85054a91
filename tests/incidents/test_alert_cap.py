"""A group of thousands of alerts stores a bounded number of them and counts the rest."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from incident.incidents.grouping import MAX_ALERTS_PER_INCIDENT
from incident.incidents.models import Alert, TimelineEntry
from tests.factories import T0, alert, payload
from tests.incidents.test_grouping import apply, incidents, kinds

EXTRA = 7


def fleet(n: int, first: int = 0, **labels: str) -> list[dict]:
    return [alert(instance=f"host-{i}", **labels) for i in range(first, first + n)]


def group(alerts: list[dict]) -> dict:
    return payload(*alerts, group_labels={"alertname": "HighErrorRate", "service": "api"})


def stored(session: Session, incident_id: int) -> int:
    return session.scalar(
        select(func.count()).select_from(Alert).where(Alert.incident_id == incident_id)
    )


def test_an_incident_stores_the_cap_and_counts_the_alerts_past_it(db_session):
    alerts = fleet(MAX_ALERTS_PER_INCIDENT + EXTRA)
    apply(db_session, group(alerts))

    [incident] = incidents(db_session)
    assert stored(db_session, incident.id) == MAX_ALERTS_PER_INCIDENT
    assert incident.alerts_dropped == EXTRA
    # The first ones to arrive are the ones kept.
    kept = {a.fingerprint for a in incident.alerts}
    assert kept == {a["fingerprint"] for a in alerts[:MAX_ALERTS_PER_INCIDENT]}
    assert kinds(db_session, incident.id) == ["opened"]

    # Alertmanager re-sends the whole group (here with one alert resolved and
    # three new ones): the count follows the group, it is not added up again.
    alerts[0] = alert("resolved", instance="host-0")
    alerts += fleet(3, first=MAX_ALERTS_PER_INCIDENT + EXTRA)
    apply(db_session, group(alerts), at=T0 + timedelta(minutes=1))

    [incident] = incidents(db_session)
    assert stored(db_session, incident.id) == MAX_ALERTS_PER_INCIDENT
    assert incident.alerts_dropped == EXTRA + 3
    # Nothing past the cap is written to the timeline either.
    entries = db_session.scalar(
        select(func.count()).select_from(TimelineEntry)
        .where(TimelineEntry.incident_id == incident.id)
    )
    assert entries == 2  # opened, alert_resolved


def test_alerts_past_the_cap_still_raise_severity_and_keep_the_incident_open(db_session):
    alerts = fleet(MAX_ALERTS_PER_INCIDENT)
    apply(db_session, group(alerts))
    [incident] = incidents(db_session)
    assert incident.severity == "SEV3"

    worse = alert(instance="the-database", severity="critical")
    apply(db_session, group([*alerts, worse]), at=T0 + timedelta(minutes=1))
    [incident] = incidents(db_session)
    assert incident.alerts_dropped == 1
    assert incident.severity == "SEV2"

    # Every stored alert resolves, but the one past the cap still fires.
    resolved = [alert("resolved", instance=f"host-{i}") for i in range(len(alerts))]
    apply(db_session, group([*resolved, worse]), at=T0 + timedelta(minutes=2))
    [incident] = incidents(db_session)
    assert incident.status == "triggered"

    apply(db_session, group([*resolved, alert("resolved", instance="the-database",
                                              severity="critical")]),
          at=T0 + timedelta(minutes=3))
    [incident] = incidents(db_session)
    assert incident.status == "resolved"
