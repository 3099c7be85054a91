"""POST /webhooks/pagerduty at the door: off without a secret, signature first, then shape,
and 2xx only once the event is on the broker."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import orjson
import pytest
import redis
from fastapi.testclient import TestClient

from incident.api.app import create_app
from incident.api.pagerduty import MAX_BODY_BYTES
from incident.config import Settings, get_settings
from incident.queues import PAGE
from tests.conftest import ApiProcess
from tests.fakes.pagerduty import WEBHOOK_SECRET, incident_data, signed_headers, webhook

ROUTE = "/webhooks/pagerduty"


@pytest.fixture
def pd_client(clean_state) -> Iterator[TestClient]:
    settings = Settings.model_validate({**get_settings().model_dump(),
                                        "pagerduty_webhook_secret": WEBHOOK_SECRET})
    with TestClient(create_app(settings)) as client:
        yield client


def queued(redis_client) -> list[dict]:
    """The task messages waiting on ``page`` (no worker runs in this module)."""
    return [json.loads(raw) for raw in redis_client.lrange(PAGE, 0, -1)]


def send(client, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return client.post(ROUTE, content=body, headers=headers)


def test_the_route_is_404_without_a_secret(clean_state):
    with TestClient(create_app(get_settings())) as client:
        body = orjson.dumps(webhook("incident.acknowledged", incident_data("k")))
        response = send(client, body, signed_headers(body))
    assert response.status_code == 404
    assert "INCIDENT_PAGERDUTY_WEBHOOK_SECRET" in response.json()["error"]


def test_a_signed_event_is_queued_with_only_what_the_worker_needs(pd_client, redis_client):
    body = orjson.dumps(webhook("incident.acknowledged", incident_data("key-1"), event_id="E1"))
    response = send(pd_client, body, signed_headers(body))
    assert response.status_code == 202, response.text
    assert response.json() == {"status": "accepted", "event_type": "incident.acknowledged"}
    [message] = queued(redis_client)
    assert message["headers"]["task"] == "incident.notifications.apply_pagerduty_event"
    assert message["headers"]["kwargsrepr"] == repr(
        {"event_id": "E1", "event_type": "incident.acknowledged"})


@pytest.mark.parametrize("tamper", ["unsigned", "wrong secret", "body changed", "not v1",
                                    "garbage"])
def test_anything_not_signed_by_the_secret_is_401_and_not_queued(pd_client, redis_client, tamper):
    body = orjson.dumps(webhook("incident.resolved", incident_data("key-1")))
    headers = signed_headers(body)
    if tamper == "unsigned":
        del headers["X-PagerDuty-Signature"]
    elif tamper == "wrong secret":
        headers = signed_headers(body, "another-secret")
    elif tamper == "body changed":
        body = body.replace(b"key-1", b"key-2")
    elif tamper == "not v1":
        headers["X-PagerDuty-Signature"] = headers["X-PagerDuty-Signature"].replace("v1=", "v0=")
    else:
        headers["X-PagerDuty-Signature"] = "v1=\u00e9\u00e9, v1=, ,,=".encode("latin-1")
    response = send(pd_client, body, headers)
    assert response.status_code == 401
    assert "X-PagerDuty-Signature" in response.json()["error"]
    assert queued(redis_client) == []


def test_while_a_secret_rotates_one_valid_signature_among_several_is_enough(pd_client, redis_client):
    body = orjson.dumps(webhook("incident.acknowledged", incident_data("key-1")))
    rotating = signed_headers(body, "the-old-secret", WEBHOOK_SECRET)
    assert rotating["X-PagerDuty-Signature"].count("v1=") == 2
    assert send(pd_client, body, rotating).status_code == 202

    neither = signed_headers(body, "the-old-secret", "yet-another")
    assert send(pd_client, body, neither).status_code == 401
    assert len(queued(redis_client)) == 1


def test_the_signature_is_checked_before_the_body_is_parsed(pd_client):
    body = b"{not json"
    assert send(pd_client, body, signed_headers(body, "wrong")).status_code == 401
    response = send(pd_client, body, signed_headers(body))
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]


@pytest.mark.parametrize(("document", "field"), [
    ({}, "event"),
    ({"event": {"event_type": "incident.acknowledged"}}, "event.id"),
    ({"event": {"id": "E1"}}, "event.event_type"),
    ({"event": {"id": "E1", "event_type": "incident.acknowledged", "data": []}}, "event.data"),
    ({"event": {"id": "E1", "event_type": "incident.acknowledged",
                "data": {"incident_key": 7}}}, "event.data.incident_key"),
    ([1, 2], ""),
])
def test_a_wrong_shape_is_422_naming_the_field(pd_client, redis_client, document, field):
    body = orjson.dumps(document)
    response = send(pd_client, body, signed_headers(body))
    assert response.status_code == 422, response.text
    assert field in [f["field"] for f in response.json()["fields"]]
    assert queued(redis_client) == []


def test_a_ping_and_other_event_types_are_answered_and_ignored(pd_client, redis_client):
    for document in (
        webhook("pagey.ping", {"message": "Hello from your friend Pagey!", "type": "ping"},
                agent=None),
        webhook("incident.priority_updated", incident_data("key-1")),
        webhook("service.updated", None),
    ):
        body = orjson.dumps(document)
        response = send(pd_client, body, signed_headers(body))
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "ignored"
    assert queued(redis_client) == []


def test_a_body_over_the_cap_is_413(pd_client, redis_client):
    body = b'{"event": "' + b"x" * MAX_BODY_BYTES + b'"}'
    response = send(pd_client, body, signed_headers(body))
    assert response.status_code == 413
    assert queued(redis_client) == []


@pytest.mark.timeout(120)
def test_with_the_broker_down_the_answer_is_503_so_pagerduty_retries(
    own_broker, incident_environment, tmp_path
):
    env = {**incident_environment, "INCIDENT_BROKER_URL": own_broker.url,
           "INCIDENT_REDIS_URL": own_broker.url,
           "INCIDENT_PAGERDUTY_WEBHOOK_SECRET": WEBHOOK_SECRET}
    api = ApiProcess(env, tmp_path / "api.log")
    try:
        api.wait_ready()

        def deliver(n: int) -> httpx.Response:
            body = orjson.dumps(webhook("incident.acknowledged", incident_data(f"key-{n}")))
            return httpx.post(f"{api.url}{ROUTE}", content=body, headers=signed_headers(body),
                              timeout=15)

        assert deliver(1).status_code == 202
        own_broker.stop()
        down = deliver(2)
        assert down.status_code == 503
        assert "enqueue" in down.json()["error"]
        own_broker.start()
        assert deliver(3).status_code == 202
        assert redis.Redis.from_url(own_broker.url).llen(PAGE) == 2
        assert WEBHOOK_SECRET not in api.log()
    finally:
        api.stop()
