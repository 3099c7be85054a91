"""Alert in, incident out: the receiver, Redis, a real Celery worker and PostgreSQL together."""

from __future__ import annotations

import threading
from datetime import timedelta

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from incident.api.app import create_app
from incident.config import get_settings
from incident.db import session_scope
from incident.incidents.models import Incident, TimelineEntry
from tests.conftest import WEBHOOK_TOKEN, ApiProcess, wait_for
from tests.factories import T0, alert, payload

HEADERS = {"Authorization": f"Bearer {WEBHOOK_TOKEN}", "Content-Type": "application/json"}
URL = "/webhooks/alertmanager"

pytestmark = pytest.mark.usefixtures("clean_state", "worker")


@pytest.fixture
def client():
    with TestClient(create_app(get_settings())) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def api_server(incident_environment, tmp_path_factory):
    server = ApiProcess(incident_environment, tmp_path_factory.mktemp("api") / "api.log")
    server.wait_ready()
    yield server
    server.stop()


def post(client, body) -> None:
    response = client.post(URL, content=orjson.dumps(body), headers=HEADERS)
    assert response.status_code == 202, response.text


def snapshot() -> tuple[list[tuple[int, str, str]], list[str]]:
    with session_scope() as session:
        incidents = [
            (i.id, i.severity, i.status)
            for i in session.scalars(select(Incident).order_by(Incident.id))
        ]
        kinds = list(session.scalars(select(TimelineEntry.kind).order_by(TimelineEntry.id)))
    return incidents, kinds


def queue_drained(redis_client) -> bool:
    return redis_client.llen("ingest") == 0 and not redis_client.hlen("unacked")


def settle(redis_client) -> tuple[list, list]:
    wait_for(lambda: queue_drained(redis_client), what="ingest queue drained")
    return snapshot()


def test_a_posted_payload_becomes_an_incident_with_its_severity(client, redis_client):
    post(client, payload(alert(severity="critical", env="prod")))
    wait_for(lambda: snapshot()[0], what="incident stored")
    incidents, kinds = settle(redis_client)
    assert [(sev, status) for _, sev, status in incidents] == [("SEV1", "triggered")]
    assert kinds == ["opened"]


def test_the_same_payload_three_times_makes_one_incident(client, redis_client):
    body = payload(alert(severity="critical"))
    for _ in range(3):
        post(client, body)
    wait_for(lambda: snapshot()[0], what="incident stored")
    incidents, kinds = settle(redis_client)
    assert len(incidents) == 1
    assert kinds == ["opened"]


def test_the_same_payload_posted_concurrently_makes_one_incident(api_server, redis_client):
    bodies = [payload(alert(instance=str(n)), group_labels={"n": str(n)}) for n in range(5)]
    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def deliver_all() -> None:
        # Two Alertmanager replicas of an HA pair, sending the same notifications at once.
        with httpx.Client(base_url=api_server.url, timeout=10) as c:
            barrier.wait()
            for body in bodies:
                statuses.append(c.post(URL, content=orjson.dumps(body), headers=HEADERS).status_code)

    threads = [threading.Thread(target=deliver_all) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert statuses == [202] * 10
    wait_for(lambda: len(snapshot()[0]) == 5, what="five incidents")
    incidents, kinds = settle(redis_client)
    assert len(incidents) == 5
    assert kinds.count("opened") == 5


def test_resolve_then_fire_again_reopens_the_incident(client, redis_client):
    post(client, payload(alert()))
    wait_for(lambda: snapshot()[0], what="incident stored")
    post(client, payload(alert("resolved")))
    wait_for(lambda: snapshot()[0][0][2] == "resolved", what="incident resolved")
    post(client, payload(alert(starts_at=T0 + timedelta(minutes=10))))
    wait_for(lambda: snapshot()[0][0][2] == "triggered", what="incident reopened")
    incidents, kinds = settle(redis_client)
    assert len(incidents) == 1
    assert kinds == ["opened", "resolved", "reopened"]
