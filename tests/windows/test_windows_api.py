"""/api/maintenance on the real app, in-process: what it takes, what it refuses and why,
and what it stores when Alertmanager cannot be reached."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from incident.api.app import create_app
from incident.config import get_settings
from incident.db import session_scope
from incident.embedded import free_port
from incident.models import MaintenanceWindow
from tests.fakes.http_server import FakeHTTPService, Reply
from tests.windows.conftest import API, window_body

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def client(clean_state) -> Iterator[TestClient]:
    with TestClient(create_app(get_settings())) as test_client:
        yield test_client


def post(client: TestClient, body: object):
    return client.post("/api/maintenance", json=body, headers=API)


def fields(response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    return {each["field"]: each["message"] for each in response.json()["fields"]}


def test_a_window_is_created_listed_and_ended_early(client):
    made = post(client, window_body('service="db"', "alertname =~ Disk.*", comment="upgrade"))
    assert made.status_code == 201, made.text
    window = made.json()
    assert window["matchers"] == ['service="db"', 'alertname=~"Disk.*"']
    assert (window["comment"], window["created_by"], window["silence_id"]) == ("upgrade", "api", None)
    assert window["active"] is True and window["ended_at"] is None

    listed = client.get("/api/maintenance", headers=API).json()["items"]
    assert [each["id"] for each in listed] == [window["id"]]
    assert set(listed[0]) >= {"id", "matchers", "starts_at", "ends_at", "comment", "created_by",
                              "silence_id", "active"}

    ended = client.delete(f"/api/maintenance/{window['id']}", headers=API)
    assert ended.status_code == 200, ended.text
    assert ended.json()["active"] is False and ended.json()["ended_at"] is not None
    assert client.get("/api/maintenance", headers=API).json()["items"][0]["active"] is False

    again = client.delete(f"/api/maintenance/{window['id']}", headers=API)
    assert again.status_code == 409
    assert "already ended" in again.json()["error"]


def test_a_window_in_the_future_is_scheduled_not_active(client):
    window = post(client, window_body('service="db"', start=timedelta(hours=1))).json()
    assert window["active"] is False
    assert datetime.fromisoformat(window["starts_at"]) > datetime.now(UTC)


def test_unknown_windows_are_404(client):
    response = client.delete("/api/maintenance/999", headers=API)
    assert response.status_code == 404
    assert response.json() == {"error": "no maintenance window 999"}


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        ({"matchers": ['service="db']}, "body.matchers.0", "never closed"),
        ({"matchers": ['service="db"', "not a matcher"]}, "body.matchers.1", "not a matcher"),
        ({"matchers": ['service=~"("']}, "body.matchers.0", "regular expression"),
        ({"matchers": []}, "body.matchers", "at least 1"),
        ({"matchers": ['service!="db"']}, "body.matchers", "must not match an empty"),
        ({"matchers": "service=\"db\""}, "body.matchers", "list"),
        ({"ends_at": "2020-01-01T00:00:00Z"}, "body.ends_at", "in the future"),
        ({"starts_at": "2020-01-01T00:00:00Z"}, "body.ends_at", "at most 30 days"),
        ({"starts_at": "2030-01-01T00:00:00Z"}, "body.ends_at", "after starts_at"),
        ({"starts_at": "2026-12-03T10:00:00"}, "body.starts_at", "RFC 3339"),
        ({"starts_at": 1700000000}, "body.starts_at", "RFC 3339"),
        ({"starts_at": "2026-12-03"}, "body.starts_at", "RFC 3339"),
        ({"ends_at": "9999-12-31T23:59:59-14:00"}, "body.ends_at", "out of range"),
        ({"comment": ""}, "body.comment", "at least 1"),
        ({"extra": 1}, "body.extra", "not permitted"),
    ],
)
def test_bad_windows_are_refused_naming_the_field(client, change, field, says):
    body = {**window_body('service="db"'), **change}
    named = fields(post(client, body))
    assert field in named, named
    assert says in named[field], named
    assert client.get("/api/maintenance", headers=API).json()["items"] == []


def test_a_body_that_is_not_json_is_refused(client):
    response = client.post("/api/maintenance", content=b"{", headers={
        **API, "Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["error"]


def test_every_route_needs_the_token(client):
    for method, url in (("GET", "/api/maintenance"), ("POST", "/api/maintenance"),
                        ("DELETE", "/api/maintenance/1")):
        response = client.request(method, url)
        assert response.status_code == 401, (method, url)


def test_with_alertmanager_down_nothing_is_stored_and_the_answer_says_so(clean_state):
    down = f"http://user:s3cret@127.0.0.1:{free_port()}"
    settings = get_settings().model_copy(update={"alertmanager_url": down})
    with TestClient(create_app(settings)) as client:
        response = post(client, window_body('service="db"'))
        assert response.status_code == 503, response.text
        assert "no window was stored" in response.json()["error"]
        assert "s3cret" not in response.text
        assert client.get("/api/maintenance", headers=API).json()["items"] == []


class RefusingAlertmanager(FakeHTTPService):
    """Answers every silence as Alertmanager answers one it refuses."""

    def handle(self, method: str, body: dict, headers: dict[str, str]) -> Reply:
        return Reply(400, "silence invalid: invalid label matcher 0: bad matcher format")


def test_when_alertmanager_refuses_the_answer_says_why_and_nothing_is_stored(clean_state):
    with RefusingAlertmanager() as refusing:
        url = f"http://127.0.0.1:{refusing.port}"
        settings = get_settings().model_copy(update={"alertmanager_url": url})
        with TestClient(create_app(settings)) as client:
            response = post(client, window_body('service="db"'))
            assert response.status_code == 502, response.text
            assert "bad matcher format" in response.json()["error"]
            assert str(refusing.port) not in response.text
            assert client.get("/api/maintenance", headers=API).json()["items"] == []


def test_a_window_whose_silence_cannot_be_expired_goes_on(clean_state):
    with TestClient(create_app(get_settings())) as client:
        window = post(client, window_body('service="db"')).json()
    with session_scope() as session:
        session.get(MaintenanceWindow, window["id"]).silence_id = "0b1d6a4c-silence"
    down = f"http://127.0.0.1:{free_port()}"
    settings = get_settings().model_copy(update={"alertmanager_url": down})
    with TestClient(create_app(settings)) as client:
        response = client.delete(f"/api/maintenance/{window['id']}", headers=API)
        assert response.status_code == 503, response.text
        assert "the window goes on" in response.json()["error"]
        [listed] = client.get("/api/maintenance", headers=API).json()["items"]
        assert (listed["active"], listed["ended_at"]) == (True, None)
