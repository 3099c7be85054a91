"""The receiver: every status code INTERFACE names, and nothing enqueued unless it says 202."""

from __future__ import annotations

import base64
import json

import orjson
import pytest

from incident.api.app import create_app
from incident.config import ConfigurationError, Settings
from tests.factories import alert, payload

URL = "/webhooks/alertmanager"


def queued(redis_client) -> list[dict]:
    """The messages waiting on the ingest queue, decoded as kombu stores them."""
    return [json.loads(m) for m in redis_client.lrange("ingest", 0, -1)]


def test_a_valid_payload_is_accepted_and_queued(client, webhook_headers, redis_client):
    body = payload(alert(instance="a"), alert(instance="b"))
    response = client.post(URL, content=orjson.dumps(body), headers=webhook_headers)

    assert response.status_code == 202
    assert response.json() == {"status": "accepted", "alerts": 2}
    [message] = queued(redis_client)
    assert message["headers"]["task"] == "incident.incidents.ingest_webhook"
    _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert kwargs["payload"] == body


def test_the_task_shows_a_summary_never_the_payload(client, webhook_headers, redis_client):
    body = payload(alert(instance="secret-host-7"))
    client.post(URL, content=orjson.dumps(body), headers=webhook_headers)
    [message] = queued(redis_client)
    shown = message["headers"]["kwargsrepr"]
    assert "'alerts': 1" in shown
    assert "secret-host-7" not in shown


def test_unknown_fields_from_newer_alertmanager_releases_are_accepted(client, webhook_headers):
    body = payload(notification_reason="repeat_interval")
    body["alerts"][0]["somethingNew"] = {"nested": True}
    response = client.post(URL, content=orjson.dumps(body), headers=webhook_headers)
    assert response.status_code == 202


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", "Basic dXNlcjpwYXNz", "Bearer", "bearer  "],
)
def test_missing_or_wrong_credentials_get_401(client, webhook_headers, redis_client, authorization):
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    response = client.post(URL, content=orjson.dumps(payload()), headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "error" in response.json()
    assert queued(redis_client) == []


def test_a_body_that_is_not_json_content_gets_415(client, webhook_headers, redis_client):
    headers = {**webhook_headers, "Content-Type": "text/plain"}
    response = client.post(URL, content=orjson.dumps(payload()), headers=headers)
    assert response.status_code == 415
    assert queued(redis_client) == []


@pytest.mark.parametrize("body", [b"{not json", b'{"version": "4",', b"\xff\xfe{}", b""])
def test_a_body_that_does_not_parse_gets_400(client, webhook_headers, redis_client, body):
    response = client.post(URL, content=body, headers=webhook_headers)
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]
    assert queued(redis_client) == []


def test_a_declared_oversize_body_gets_413_without_being_read(client, webhook_headers, redis_client):
    limit = client.app.state.settings.max_body_bytes
    headers = {**webhook_headers, "Content-Length": str(limit + 1)}
    response = client.post(URL, content=b"x" * (limit + 1), headers=headers)
    assert response.status_code == 413
    assert queued(redis_client) == []


def test_a_streamed_body_is_cut_off_at_the_limit(client, webhook_headers, redis_client):
    limit = client.app.state.settings.max_body_bytes
    sent = 0

    def chunks():
        nonlocal sent
        piece = b" " * 65536
        while sent <= limit + 4 * len(piece):
            sent += len(piece)
            yield piece

    # No Content-Length: the limit must hold while reading, not after.
    response = client.post(URL, content=chunks(), headers=webhook_headers)
    assert response.status_code == 413
    assert queued(redis_client) == []


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda b: b.update(version="3"), "version"),
        (lambda b: b.pop("groupKey"), "groupKey"),
        (lambda b: b.update(alerts=[]), "alerts"),
        (lambda b: b["alerts"][0].pop("fingerprint"), "alerts.0.fingerprint"),
        (lambda b: b["alerts"][0]["labels"].update(replicas=3), "alerts.0.labels.replicas"),
        (lambda b: b["alerts"][0].update(status="pending"), "alerts.0.status"),
        (lambda b: b["alerts"][0].update(startsAt="yesterday"), "alerts.0.startsAt"),
    ],
)
def test_a_payload_that_is_not_version_4_gets_422_naming_the_field(
    client, webhook_headers, redis_client, mutate, field
):
    body = payload()
    mutate(body)
    response = client.post(URL, content=orjson.dumps(body), headers=webhook_headers)
    assert response.status_code == 422
    assert field in [f["field"] for f in response.json()["fields"]]
    assert queued(redis_client) == []


def test_a_json_array_gets_422(client, webhook_headers, redis_client):
    response = client.post(URL, content=b"[1, 2]", headers=webhook_headers)
    assert response.status_code == 422
    assert queued(redis_client) == []


def test_the_receiver_refuses_to_start_without_a_webhook_token():
    with pytest.raises(ConfigurationError, match="INCIDENT_WEBHOOK_TOKEN"):
        create_app(Settings(webhook_token=None, api_token="x", database_url="postgresql://h/d"))


def test_unauthenticated_webhooks_need_an_explicit_opt_out(clean_state, redis_client):
    from fastapi.testclient import TestClient

    settings = Settings(webhook_token=None, webhook_auth="none", api_token="x")
    with TestClient(create_app(settings)) as open_client:
        response = open_client.post(
            URL, content=orjson.dumps(payload()), headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 202
    assert len(queued(redis_client)) == 1


def test_an_urgent_group_is_queued_for_paging_ahead_of_the_backlog(
    client, webhook_headers, redis_client
):
    calm = payload(alert(severity="info"), group_labels={"g": "calm"})
    urgent = payload(alert(severity="info", instance="a"), alert(severity="critical", instance="b"),
                     group_labels={"g": "urgent"})
    resolved_urgent = payload(alert("resolved", severity="critical"), group_labels={"g": "urgent"})
    for body in (calm, urgent, resolved_urgent):
        assert client.post(URL, content=orjson.dumps(body), headers=webhook_headers).status_code == 202
    assert len(queued(redis_client)) == 1  # ingest
    paged = [json.loads(m) for m in redis_client.lrange("page", 0, -1)]
    assert len(paged) == 2
    assert {m["headers"]["task"] for m in paged} == {"incident.incidents.ingest_webhook"}


LIMIT = 16 * 1024


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("x" * LIMIT, True),
        ("x" * (LIMIT + 1), False),
        # The limit counts UTF-8 bytes: 8,193 two-byte characters are 16,386 bytes.
        ("é" * (LIMIT // 2), True),
        ("é" * (LIMIT // 2 + 1), False),
    ],
    ids=["16KiB", "16KiB+1", "16KiB-of-2-byte-chars", "16KiB+2-in-2-byte-chars"],
)
def test_a_label_value_over_16_KiB_gets_422_naming_the_label(
    client, webhook_headers, redis_client, value, accepted
):
    body = payload(alert(instance="a"), alert(instance="b", hostname=value))
    response = client.post(URL, content=orjson.dumps(body), headers=webhook_headers)
    if accepted:
        assert response.status_code == 202
        return
    assert response.status_code == 422
    answer = response.json()
    assert "'hostname'" in answer["error"]
    assert "16 KiB" in answer["error"]
    assert answer["fields"] == [{"field": "alerts.1.labels.hostname", "message": answer["error"]}]
    assert queued(redis_client) == []


def test_a_label_name_over_16_KiB_gets_422_showing_its_start(client, webhook_headers, redis_client):
    name = "n" * (LIMIT + 1)
    body = payload(alert(**{name: "v"}))
    response = client.post(URL, content=orjson.dumps(body), headers=webhook_headers)
    assert response.status_code == 422
    answer = response.json()
    assert "label name 'nnnn" in answer["error"]
    assert f"{LIMIT + 1} bytes" in answer["error"]
    [field] = answer["fields"]
    assert field["field"].startswith("alerts.0.labels.nnnn")
    assert len(response.content) < 1000  # the name is shown cut, not echoed whole
    assert queued(redis_client) == []


def test_a_queued_payload_with_a_long_label_is_still_valid_for_the_workers():
    # The limit is the receiver's: what it accepted before the limit existed is applied.
    from incident.alerts.schemas import WebhookPayload

    body = payload(alert(instance="x" * (LIMIT * 2)))
    assert WebhookPayload.model_validate(body).alerts[0].labels["instance"] == "x" * (LIMIT * 2)
