"""The silences service without HTTP in front: retries that make one silence, silences
whose answer was lost, refusals, and a real worker process calling it as Slack's menu will."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import select

from incident.db import engine_for, session_scope
from incident.embedded import free_port
from incident.incidents.events import NO_SUBSCRIBERS
from incident.incidents.lifecycle import API, SLACK, Actor
from incident.incidents.models import TimelineEntry, TimelineKind
from incident.integrations.alertmanager import (
    Alertmanager,
    AlertmanagerRefused,
    AlertmanagerUnavailable,
)
from incident.queues import PAGE
from incident.silences.models import IncidentSilence
from incident.silences.service import (
    SILENCE_TASK,
    IncidentNotFound,
    Silences,
    SilencingNotConfigured,
)
from tests.alertmanager_support import AlertmanagerProcess, SlowProxy
from tests.conftest import WorkerProcess, wait_for
from tests.silences.conftest import HEADERS, client_for, open_incident, silences_for

pytestmark = [pytest.mark.alertmanager, pytest.mark.timeout(120)]
PUBLIC_URL = "http://console.test"


def service(database_url: str, alertmanager: Alertmanager | None) -> Silences:
    return Silences(engine_for(database_url), alertmanager, NO_SUBSCRIBERS, PUBLIC_URL)


def timeline_kinds(incident_id: int) -> list[str]:
    with session_scope() as session:
        return list(session.scalars(
            select(TimelineEntry.kind).where(TimelineEntry.incident_id == incident_id)
            .order_by(TimelineEntry.id)
        ))


def rows(incident_id: int) -> list[tuple[str | None, str | None]]:
    """(silence id, expired_at) of each row, oldest first."""
    with session_scope() as session:
        return [(row.silence_id, row.expired_at and "expired") for row in session.scalars(
            select(IncidentSilence).where(IncidentSilence.incident_id == incident_id)
            .order_by(IncidentSilence.id)
        )]


def test_a_retry_after_a_timed_out_create_makes_no_second_silence(
    clean_state, database_url, real_alertmanager: AlertmanagerProcess,
):
    incident_id, service_label = open_incident()
    reference = f"incident-silence:{uuid.uuid4().hex}"
    slow = SlowProxy(real_alertmanager.url, delay=5)
    try:
        # The only member answers too late, after applying it: the outcome is unknown.
        with pytest.raises(AlertmanagerUnavailable):
            service(database_url, Alertmanager([slow.url], timeout=0.5)).silence(
                incident_id, API, timedelta(hours=1), reference=reference)
    finally:
        slow.close()
    assert slow.posts == 1
    [made] = silences_for(real_alertmanager.url, service_label)
    assert reference in made["comment"]
    assert rows(incident_id) == [(None, None)]  # reserved, not confirmed
    assert "silenced" not in timeline_kinds(incident_id)

    silences = service(database_url, Alertmanager([real_alertmanager.url]))
    silences.silence(incident_id, API, timedelta(hours=1), reference=reference)
    silences.silence(incident_id, API, timedelta(hours=1), reference=reference)

    # The retries found the silence the first try made, and recorded it once.
    assert [s["id"] for s in silences_for(real_alertmanager.url, service_label)] == [made["id"]]
    assert rows(incident_id) == [(made["id"], None)]
    assert timeline_kinds(incident_id).count("silenced") == 1


def test_a_silence_whose_answer_was_lost_is_still_expired_by_unsilence(
    clean_state, database_url, real_alertmanager: AlertmanagerProcess,
):
    incident_id, service_label = open_incident()
    slow = SlowProxy(real_alertmanager.url, delay=5)
    try:
        with pytest.raises(AlertmanagerUnavailable):
            service(database_url, Alertmanager([slow.url], timeout=0.5)).silence(
                incident_id, API, timedelta(hours=1))
    finally:
        slow.close()
    [made] = silences_for(real_alertmanager.url, service_label)
    assert made["status"]["state"] == "active"

    expired = service(database_url, Alertmanager([real_alertmanager.url])).unsilence(
        incident_id, Actor(SLACK, "U024BE7LH", "alice"))

    assert expired == 1
    [after] = silences_for(real_alertmanager.url, service_label)
    assert after["status"]["state"] == "expired"
    assert rows(incident_id) == [(made["id"], "expired")]
    assert timeline_kinds(incident_id)[-1] == TimelineKind.UNSILENCED


class Refusing:
    """An Alertmanager that answers every silence with a 400, as for a bad matcher."""

    def __init__(self) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(400)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'"silence invalid: invalid label matcher 0"')

        self.server = ThreadingHTTPServer(("127.0.0.1", int(self.url.rsplit(":", 1)[1])), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def refusing() -> Iterator[Refusing]:
    server = Refusing()
    yield server
    server.close()


def test_a_refused_silence_says_why_and_leaves_nothing_reserved(clean_state, database_url, refusing):
    incident_id, _ = open_incident()
    with pytest.raises(AlertmanagerRefused) as caught:
        service(database_url, Alertmanager([refusing.url])).silence(
            incident_id, API, timedelta(hours=1))
    assert "invalid label matcher" in caught.value.reason
    assert refusing.url not in caught.value.reason
    assert rows(incident_id) == []


def test_a_refusal_reaches_the_api_as_502_with_alertmanagers_reason(clean_state, refusing):
    incident_id, _ = open_incident()
    with client_for(refusing.url) as client:
        response = client.post(f"/api/incidents/{incident_id}/silence", headers=HEADERS)
    assert response.status_code == 502, response.text
    assert "invalid label matcher" in response.json()["error"]


def test_the_service_says_what_is_missing(clean_state, database_url, real_alertmanager):
    with pytest.raises(SilencingNotConfigured, match="INCIDENT_ALERTMANAGER_URL"):
        service(database_url, None).silence(1, API, timedelta(hours=1))
    with pytest.raises(IncidentNotFound):
        service(database_url, Alertmanager([real_alertmanager.url])).silence(
            987654, API, timedelta(hours=1))
    with pytest.raises(ValueError, match="from 1m to 7d"):
        service(database_url, Alertmanager([real_alertmanager.url])).silence(
            1, API, timedelta(days=8))


@pytest.fixture(scope="module")
def silencing_worker(
    incident_environment: dict[str, str], real_alertmanager: AlertmanagerProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WorkerProcess]:
    log_path: Path = tmp_path_factory.mktemp("worker") / "worker.log"
    process = WorkerProcess(
        {**incident_environment, "INCIDENT_ALERTMANAGER_URL": real_alertmanager.url}, log_path,
        concurrency=1, queues=PAGE,
    )
    process.wait_ready()
    yield process
    process.stop()


def test_a_worker_task_silences_as_the_slack_user_who_asked(
    clean_state, silencing_worker: WorkerProcess, real_alertmanager: AlertmanagerProcess,
):
    from incident.worker.app import app

    incident_id, service_label = open_incident()
    app.send_task(SILENCE_TASK, queue=PAGE, kwargs={
        "incident_id": incident_id, "by": SLACK, "user": "U024BE7LH", "name": "alice",
        "duration_seconds": 4 * 3600,
    })

    made = wait_for(lambda: silences_for(real_alertmanager.url, service_label), timeout=30,
                    what="the worker's silence in Alertmanager")
    assert [s["createdBy"] for s in made] == ["slack:U024BE7LH (alice)"]
    wait_for(lambda: "silenced" in timeline_kinds(incident_id), what="the silenced entry")
    with session_scope() as session:
        entry = session.scalars(select(TimelineEntry).where(
            TimelineEntry.incident_id == incident_id, TimelineEntry.kind == "silenced")).one()
        assert entry.detail["by"] == "slack"
        assert entry.detail["user"] == "U024BE7LH"
        assert entry.detail["name"] == "alice"
        assert entry.detail["duration"] == "4h"
        assert entry.detail["silence_id"] == made[0]["id"]
