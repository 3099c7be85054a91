"""Requests not signed by Slack within five minutes, or replayed, are refused
with 401 before their body is read; bad payloads are named; without a signing
secret the route does not exist."""

from __future__ import annotations

import time

import httpx
import pytest
from fastapi.testclient import TestClient

from incident.api.app import create_app
from incident.config import get_settings
from tests.notifications.support import incident, post
from tests.factories import alert, payload
from tests.conftest import wait_for
from tests.slack.conftest import block_actions, button, form, menu, signed

pytestmark = [pytest.mark.usefixtures("clean_state"), pytest.mark.timeout(60)]

ROUTE = "/slack/interactions"


def send(api, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{api.url}{ROUTE}", content=body, headers=headers, timeout=10)


def test_without_a_signing_secret_the_route_answers_404(clean_state):
    settings = get_settings()
    assert settings.slack_signing_secret is None
    body = form(block_actions(button("incident.acknowledge", "1")))
    with TestClient(create_app(settings)) as client:
        response = client.post(ROUTE, content=body, headers=signed(body))
    assert response.status_code == 404
    assert "INCIDENT_SLACK_SIGNING_SECRET" in response.json()["error"]


@pytest.mark.parametrize("case", [
    "missing", "no-timestamp", "wrong-secret", "tampered-body", "stale", "future", "not-a-number",
])
def test_a_request_not_signed_by_slack_is_refused_before_it_is_read(slack_api, case):
    body = form(block_actions(button("incident.acknowledge", "1")))
    headers = signed(body)
    match case:
        case "missing":
            headers.pop("X-Slack-Signature")
        case "no-timestamp":
            headers.pop("X-Slack-Request-Timestamp")
        case "wrong-secret":
            headers = signed(body, secret="not-the-secret")
        case "tampered-body":
            body = body.replace(b"%221%22", b"%222%22")
        case "stale":
            headers = signed(body, timestamp=int(time.time()) - 6 * 60)
        case "future":
            headers = signed(body, timestamp=int(time.time()) + 6 * 60)
        case "not-a-number":
            headers["X-Slack-Request-Timestamp"] = "soon"
    response = send(slack_api, body, headers)
    assert response.status_code == 401, response.text
    assert response.json()["error"]


def test_garbage_without_a_valid_signature_is_401_not_a_parse_error(slack_api):
    for body in (b"\xff\xfe not a form", b"payload=%7Bnot json", b""):
        response = send(slack_api, body, {"X-Slack-Signature": "v0=00",
                                          "X-Slack-Request-Timestamp": str(int(time.time()))})
        assert response.status_code == 401, (body, response.text)


def test_a_replayed_request_is_refused(slack_api, slack_worker):
    post(slack_api, payload(alert(severity="critical")))
    wait_for(lambda: httpx.get(f"{slack_api.url}/api/incidents/1",
                               headers={"Authorization": "Bearer test-api-token-9b7e"}).status_code == 200,
             what="the incident")
    body = form(block_actions(button("incident.acknowledge", "1")))
    headers = signed(body)
    assert send(slack_api, body, headers).status_code == 200
    replayed = send(slack_api, body, headers)
    assert replayed.status_code == 401
    assert "replay" in replayed.json()["error"]
    wait_for(lambda: incident(slack_api, 1)["status"] == "acknowledged", what="the first one acted")


@pytest.mark.parametrize(("payload_text", "status", "field"), [
    ("{not json", 400, None),
    ('["a list"]', 422, "payload"),
    ('{"type": "view_submission", "user": {"id": "U1"}, "actions": []}', 422, "payload.type"),
    (block_actions(button("incident.reboot", "1")), 422, "payload.actions.0.action_id"),
    (block_actions(button("incident.acknowledge", "one")), 422, "payload.actions.0.value"),
    (block_actions(button("incident.acknowledge", "-3")), 422, "payload.actions.0.value"),
    (block_actions(button("incident.acknowledge", "0")), 422, "payload.actions.0.value"),
    (block_actions(menu("1:2h")), 422, "payload.actions.0.selected_option.value"),
    (block_actions(menu("x:1h")), 422, "payload.actions.0.selected_option.value"),
    (block_actions(button("incident.resolve", "1"), user={"id": "<!channel>"}), 422,
     "payload.user.id"),
    (block_actions(button("incident.resolve", "1"), response_url="javascript:alert(1)"), 422,
     "payload.response_url"),
])
def test_a_signed_but_wrong_payload_is_refused_naming_the_field(
    slack_api, payload_text, status, field
):
    import json
    text = payload_text if isinstance(payload_text, str) else json.dumps(payload_text)
    body = form(text)
    response = send(slack_api, body, signed(body))
    assert response.status_code == status, response.text
    answer = response.json()
    assert answer["error"]
    if field is not None:
        assert field in [f["field"] for f in answer["fields"]], answer


def test_a_form_without_a_payload_is_422_naming_it(slack_api):
    body = b"text=hello"
    response = send(slack_api, body, signed(body))
    assert response.status_code == 422
    assert response.json()["fields"][0]["field"] == "payload"


def test_an_oversized_body_is_413(slack_api):
    body = form("x" * (1024 * 1024 + 10))
    response = send(slack_api, body, signed(body))
    assert response.status_code == 413
