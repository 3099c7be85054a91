"""The incidents API: listing, paging, one incident, and transitions by hand."""

from __future__ import annotations

from datetime import timedelta

import pytest

from incident.alerts.schemas import WebhookPayload
from incident.db import session_scope
from incident.incidents.grouping import apply_webhook
from incident.rules import load_rules
from tests.factories import T0, alert, payload

RULES = load_rules(None)
INCIDENT_KEYS = {
    "id", "key", "title", "summary", "severity", "status", "flapping", "created_at",
    "acknowledged_at", "resolved_at", "acknowledged_by", "resolved_by", "route", "labels", "alerts", "timeline",
    "remediations", "notifications", "silences",
    # Beyond INTERFACE's shape: how much there is, for incidents too large to show whole.
    "alerts_total", "alerts_next_cursor", "alerts_dropped", "timeline_total",
    "timeline_next_cursor",
    # Held back by a maintenance window.
    "in_maintenance",
}


def open_incident(n: int, **labels: str) -> int:
    body = payload(alert(instance=str(n), **labels), group_labels={"alertname": "Down", "n": str(n)})
    with session_scope() as session:
        change = apply_webhook(
            session, WebhookPayload.model_validate(body), RULES, now=T0 + timedelta(seconds=n)
        )
    return change.incident_id


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/incidents"),
        ("GET", "/api/incidents/1"),
        ("GET", "/api/incidents/1/alerts"),
        ("GET", "/api/incidents/1/timeline"),
        ("POST", "/api/incidents/1/acknowledge"),
        ("POST", "/api/incidents/1/resolve"),
        ("POST", "/api/incidents/1/silence"),
        ("DELETE", "/api/incidents/1/silence"),
    ],
)
def test_every_api_route_needs_the_token(client, method, path):
    for headers in ({}, {"Authorization": "Bearer nope"}):
        response = client.request(method, path, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]


def test_health_and_metrics_need_no_token(client):
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert client.get("/metrics").status_code == 200
    assert client.get("/docs").status_code == 200
    assert "/webhooks/alertmanager" in client.get("/openapi.json").json()["paths"]


def test_one_incident_has_the_interface_shape(client, api_headers):
    incident_id = open_incident(1, severity="critical")
    response = client.get(f"/api/incidents/{incident_id}", headers=api_headers)

    assert response.status_code == 200
    body = response.json()
    assert set(body) == INCIDENT_KEYS
    assert body["severity"] == "SEV2"
    assert body["title"] == "Down 1"
    [shown] = body["alerts"]
    assert set(shown) == {"fingerprint", "status", "labels", "annotations", "starts_at", "ends_at"}
    assert [entry["kind"] for entry in body["timeline"]] == ["opened"]


def test_an_unknown_incident_is_404(client, api_headers):
    response = client.get("/api/incidents/999999", headers=api_headers)
    assert response.status_code == 404
    assert client.post("/api/incidents/999999/resolve", headers=api_headers).status_code == 404


def test_listing_is_newest_first_and_filters(client, api_headers):
    ids = [open_incident(n, severity="critical" if n % 2 else "warning") for n in range(1, 6)]
    listed = client.get("/api/incidents", headers=api_headers).json()
    assert [i["id"] for i in listed["items"]] == ids[::-1]
    assert listed["next_cursor"] is None

    sev2 = client.get("/api/incidents?severity=SEV2", headers=api_headers).json()["items"]
    assert {i["id"] for i in sev2} == {ids[0], ids[2], ids[4]}

    client.post(f"/api/incidents/{ids[1]}/resolve", headers=api_headers)
    resolved = client.get("/api/incidents?status=resolved", headers=api_headers).json()["items"]
    assert [i["id"] for i in resolved] == [ids[1]]


def test_the_cursor_walks_every_incident_exactly_once(client, api_headers):
    ids = [open_incident(n) for n in range(1, 8)]
    seen, cursor, pages = [], None, 0
    while True:
        query = "?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(f"/api/incidents{query}", headers=api_headers).json()
        seen += [i["id"] for i in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    assert pages == 3


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=501", "limit=ten", "status=open", "severity=SEV5", "cursor=%%%"]
)
def test_bad_query_parameters_get_422(client, api_headers, query):
    response = client.get(f"/api/incidents?{query}", headers=api_headers)
    assert response.status_code == 422


def test_acknowledge_then_resolve_by_hand(client, api_headers):
    incident_id = open_incident(1)
    acked = client.post(
        f"/api/incidents/{incident_id}/acknowledge", headers=api_headers, json={"note": "on it"}
    )
    assert acked.status_code == 200
    assert acked.json()["status"] == "acknowledged"
    assert acked.json()["acknowledged_at"] is not None
    assert acked.json()["acknowledged_by"] == {"by": "api", "user": None, "name": None}
    assert acked.json()["resolved_by"] is None
    assert acked.json()["timeline"][-1] == {
        "at": acked.json()["acknowledged_at"], "kind": "acknowledged",
        "detail": {"by": "api", "note": "on it"},
    }
    assert client.post(f"/api/incidents/{incident_id}/acknowledge", headers=api_headers).status_code == 409

    resolved = client.post(f"/api/incidents/{incident_id}/resolve", headers=api_headers, content=b"{}")
    assert resolved.status_code == 200
    assert resolved.json()["status"] == "resolved"
    assert resolved.json()["resolved_by"] == {"by": "api", "user": None, "name": None}
    again = client.post(f"/api/incidents/{incident_id}/resolve", headers=api_headers)
    assert again.status_code == 409
    assert "resolved" in again.json()["error"]


def test_a_transition_body_must_be_json_with_only_a_note(client, api_headers):
    incident_id = open_incident(1)
    url = f"/api/incidents/{incident_id}/acknowledge"
    assert client.post(url, headers=api_headers, content=b"{oops").status_code == 400
    wrong = client.post(url, headers=api_headers, json={"nope": 1})
    assert wrong.status_code == 422
    assert wrong.json()["fields"][0]["field"] == "nope"
