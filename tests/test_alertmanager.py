"""The real Alertmanager in front of the receiver: it groups, repeats and resolves,
and the incidents in PostgreSQL must come out as the interface promises."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from incident.db import session_scope
from incident.incidents.models import Incident
from tests.alertmanager_support import (
    WAIT,
    AlertmanagerProcess,
)
from tests.conftest import ApiProcess, wait_for

pytestmark = [
    pytest.mark.alertmanager,
    pytest.mark.timeout(180),
    # The binary first: without it there is no point starting anything else.
    pytest.mark.usefixtures("alertmanager_binary", "worker"),
]

# Alertmanager logs this when a receiver answers anything but 2xx (a 401, a 503…).
NOTIFY_FAILED = "Notify for alerts failed"
WEBHOOK_ACCEPTED = re.compile(r"POST /webhooks/alertmanager HTTP/1\.1\\?\" 202")


@pytest.fixture(scope="module")
def api_server(incident_environment, tmp_path_factory) -> Iterator[ApiProcess]:
    server = ApiProcess(incident_environment, tmp_path_factory.mktemp("api") / "api.log")
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture
def alertmanager(
    alertmanager_binary: str, api_server: ApiProcess, clean_state: None, tmp_path: Path
) -> Iterator[AlertmanagerProcess]:
    # One per test, started on empty tables and stopped before the next one
    # truncates them, so no test sees another's re-sends.
    process = AlertmanagerProcess(
        alertmanager_binary, tmp_path, f"{api_server.url}/webhooks/alertmanager"
    )
    try:
        process.wait_ready()
        yield process
        assert NOTIFY_FAILED not in process.log(), process.problems()
    finally:
        process.stop()


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def prometheus_alert(
    *, service: str, instance: str, starts_at: datetime, ends_at: datetime, **labels: str
) -> dict[str, Any]:
    """An alert as Prometheus posts it: endsAt a few evaluation intervals ahead while firing."""
    return {
        "labels": {"alertname": "HighErrorRate", "service": service, "instance": instance, **labels},
        "annotations": {"summary": f"5xx above 5% on {service}"},
        "startsAt": _iso(starts_at),
        "endsAt": _iso(ends_at),
        "generatorURL": "http://prometheus.test:9090/graph?g0.expr=job%3Aerrors%3Arate5m",
    }


def incidents() -> list[dict[str, Any]]:
    """Every incident as plain data, so pytest can show what differs."""
    with session_scope() as session:
        rows = session.scalars(
            select(Incident)
            .order_by(Incident.id)
            .options(selectinload(Incident.alerts), selectinload(Incident.timeline))
        ).all()
        return [
            {
                "id": i.id,
                "title": i.title,
                "summary": i.summary,
                "severity": i.severity,
                "status": i.status,
                "updated_at": i.updated_at,
                "resolved_at": i.resolved_at,
                "alerts": {
                    a.labels["instance"]: {
                        "status": a.status, "severity": a.severity, "ends_at": a.ends_at,
                    }
                    for a in i.alerts
                },
                "timeline": [(t.id, t.kind) for t in i.timeline],
            }
            for i in rows
        ]


def kinds(incident: dict[str, Any]) -> list[str]:
    return [kind for _, kind in incident["timeline"]]


def settled(redis_client) -> list[dict[str, Any]]:
    """Incidents once every accepted webhook has been worked off (acks are late)."""
    wait_for(
        lambda: redis_client.llen("ingest") == 0 and not redis_client.hlen("unacked"),
        timeout=WAIT, what="ingest queue drained",
    )
    return incidents()


def webhooks_accepted(api_server: ApiProcess) -> int:
    return len(WEBHOOK_ACCEPTED.findall(api_server.log_path.read_text(errors="replace")))


def wait_until(predicate, *, what: str, alertmanager: AlertmanagerProcess):
    try:
        return wait_for(predicate, timeout=WAIT, interval=0.1, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nalertmanager says:\n{alertmanager.problems()}") from None


def test_a_group_is_one_incident_that_resends_leave_alone_until_it_resolves(
    alertmanager, api_server, redis_client
):
    now = datetime.now(UTC)
    started = now - timedelta(minutes=2)
    firing = [
        prometheus_alert(
            service="api", instance="a", severity="critical", env="prod",
            starts_at=started, ends_at=now + timedelta(minutes=5),
        ),
        prometheus_alert(
            service="api", instance="b", severity="warning", env="prod",
            starts_at=started, ends_at=now + timedelta(minutes=5),
        ),
    ]
    accepted_before = webhooks_accepted(api_server)
    alertmanager.post_alerts(*firing)

    wait_until(
        lambda: (found := incidents()) and len(found[0]["alerts"]) == 2,
        what="one incident holding both alerts", alertmanager=alertmanager,
    )
    [opened] = settled(redis_client)
    assert opened["title"] == "HighErrorRate api"
    assert opened["summary"] == "5xx above 5% on api"
    assert (opened["status"], opened["severity"]) == ("triggered", "SEV1")
    # critical+prod is SEV1, warning is SEV3; Alertmanager's zero endsAt means "still firing".
    assert opened["alerts"] == {
        "a": {"status": "firing", "severity": "SEV1", "ends_at": None},
        "b": {"status": "firing", "severity": "SEV3", "ends_at": None},
    }
    # Both alerts usually arrive in one notification; if Alertmanager split them
    # the second is an alert_added, never a second opening.
    assert kinds(opened) in (["opened"], ["opened", "alert_added"])

    # Alertmanager repeats the unchanged group every repeat_interval: wait for two.
    first_delivery = webhooks_accepted(api_server)
    assert first_delivery > accepted_before
    wait_until(
        lambda: webhooks_accepted(api_server) >= first_delivery + 2,
        what="two re-sends of the group", alertmanager=alertmanager,
    )
    assert settled(redis_client) == [opened]

    resolved_at = datetime.now(UTC)
    alertmanager.post_alerts(
        *({**alert, "endsAt": _iso(resolved_at)} for alert in firing)
    )
    wait_until(
        lambda: incidents()[0]["status"] == "resolved",
        what="incident resolved by Alertmanager's resolved notification",
        alertmanager=alertmanager,
    )
    [closed] = settled(redis_client)
    assert closed["id"] == opened["id"]
    assert closed["severity"] == "SEV1"
    assert closed["resolved_at"] is not None
    assert {k: a["status"] for k, a in closed["alerts"].items()} == {
        "a": "resolved", "b": "resolved",
    }
    assert all(a["ends_at"] is not None for a in closed["alerts"].values())
    assert closed["timeline"][: len(opened["timeline"])] == opened["timeline"]
    # One resolved notification holds both alerts, unless a flush fell between them.
    assert kinds(closed)[len(opened["timeline"]):] in (["resolved"], ["alert_resolved", "resolved"])


def test_another_service_is_a_separate_incident(alertmanager, redis_client):
    now = datetime.now(UTC)
    later = now + timedelta(minutes=5)
    alertmanager.post_alerts(
        prometheus_alert(
            service="api", instance="a", severity="critical", env="prod",
            starts_at=now, ends_at=later,
        ),
        prometheus_alert(
            service="db", instance="c", severity="critical", env="staging",
            starts_at=now, ends_at=later,
        ),
    )
    wait_until(
        lambda: len(incidents()) == 2, what="two incidents", alertmanager=alertmanager
    )
    found = sorted(settled(redis_client), key=lambda i: i["title"])
    assert [(i["title"], i["severity"], i["status"]) for i in found] == [
        ("HighErrorRate api", "SEV1", "triggered"),
        ("HighErrorRate db", "SEV2", "triggered"),
    ]
    assert [sorted(i["alerts"]) for i in found] == [["a"], ["c"]]
    assert [kinds(i) for i in found] == [["opened"], ["opened"]]
