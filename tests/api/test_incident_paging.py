"""A large incident is answered quickly and in bounded size; its alerts and timeline
can be read whole, page by page."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import insert

from incident.alerts.schemas import WebhookPayload
from incident.db import session_scope
from incident.incidents.grouping import MAX_ALERTS_PER_INCIDENT, apply_webhook
from incident.incidents.models import TimelineEntry
from incident.incidents.store import SHOWN_DEFAULT
from incident.rules import load_rules
from tests.factories import T0, alert, payload

RULES = load_rules(None)
NOTES = 5_000


def large_incident() -> tuple[int, list[str]]:
    """An incident at the alert cap, with thousands of timeline entries."""
    alerts = [alert(instance=f"host-{n}") for n in range(MAX_ALERTS_PER_INCIDENT + 5)]
    with session_scope() as session:
        change = apply_webhook(session, WebhookPayload.model_validate(payload(*alerts)), RULES, now=T0)
        session.execute(insert(TimelineEntry), [
            {"incident_id": change.incident_id, "at": T0 + timedelta(seconds=n), "kind": "note",
             "detail": {"by": "api", "note": f"note {n}"}}
            for n in range(NOTES)
        ])
    return change.incident_id, [a["fingerprint"] for a in alerts[:MAX_ALERTS_PER_INCIDENT]]


def walk(client, url: str, headers: dict[str, str], limit: int) -> tuple[list[dict], int]:
    items, cursor, pages = [], None, 0
    while True:
        params = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        response = client.get(url, headers=headers, params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert set(page) == {"items", "next_cursor"}
        assert len(page["items"]) <= limit
        items += page["items"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            return items, pages


def test_a_large_incident_is_answered_quickly_and_bounded(client, api_headers):
    incident_id, _ = large_incident()

    started = time.monotonic()
    response = client.get(f"/api/incidents/{incident_id}", headers=api_headers)
    took = time.monotonic() - started

    assert response.status_code == 200
    assert took < 2.0, f"{took:.2f}s"
    assert len(response.content) < 100_000, len(response.content)
    body = response.json()
    assert len(body["alerts"]) == SHOWN_DEFAULT
    assert (body["alerts_total"], body["alerts_dropped"]) == (MAX_ALERTS_PER_INCIDENT, 5)
    assert len(body["timeline"]) == SHOWN_DEFAULT
    assert body["timeline_total"] == NOTES + 1  # and "opened"
    assert body["alerts_next_cursor"] and body["timeline_next_cursor"]

    listed = client.get("/api/incidents", headers=api_headers).json()["items"]
    [item] = [i for i in listed if i["id"] == incident_id]
    assert len(item["alerts"]) == SHOWN_DEFAULT and len(item["timeline"]) == SHOWN_DEFAULT

    chosen = client.get(f"/api/incidents/{incident_id}?alerts_limit=1000&timeline_limit=3",
                        headers=api_headers).json()
    assert len(chosen["alerts"]) == MAX_ALERTS_PER_INCIDENT and chosen["alerts_next_cursor"] is None
    assert [e["kind"] for e in chosen["timeline"]] == ["opened", "note", "note"]


def test_a_client_pages_through_every_alert_and_timeline_entry(client, api_headers):
    incident_id, fingerprints = large_incident()
    shown = client.get(f"/api/incidents/{incident_id}", headers=api_headers).json()

    alerts, pages = walk(client, f"/api/incidents/{incident_id}/alerts", api_headers, 300)
    assert [a["fingerprint"] for a in alerts] == fingerprints
    assert pages == 4
    assert alerts[:SHOWN_DEFAULT] == shown["alerts"]

    timeline, _ = walk(client, f"/api/incidents/{incident_id}/timeline", api_headers, 1000)
    assert len(timeline) == shown["timeline_total"]
    assert timeline[0]["kind"] == "opened"
    assert [e["detail"]["note"] for e in timeline[1:]] == [f"note {n}" for n in range(NOTES)]
    assert timeline[:SHOWN_DEFAULT] == shown["timeline"]

    # The incident's own cursor continues where its first page stopped.
    rest = client.get(f"/api/incidents/{incident_id}/timeline", headers=api_headers,
                      params={"cursor": shown["timeline_next_cursor"], "limit": 5}).json()
    assert rest["items"] == timeline[SHOWN_DEFAULT:SHOWN_DEFAULT + 5]


def test_a_small_incident_is_shown_whole(client, api_headers):
    body = payload(alert(instance="a"), alert(instance="b"))
    with session_scope() as session:
        change = apply_webhook(session, WebhookPayload.model_validate(body), RULES, now=T0)
    shown = client.get(f"/api/incidents/{change.incident_id}", headers=api_headers).json()
    assert len(shown["alerts"]) == shown["alerts_total"] == 2
    assert shown["alerts_next_cursor"] is None and shown["timeline_next_cursor"] is None
    assert shown["alerts_dropped"] == 0
    alerts = client.get(f"/api/incidents/{change.incident_id}/alerts", headers=api_headers).json()
    assert alerts == {"items": shown["alerts"], "next_cursor": None}


@pytest.mark.parametrize("path", ["alerts", "timeline"])
def test_paging_an_unknown_incident_is_404_and_bad_parameters_422(client, api_headers, path):
    assert client.get(f"/api/incidents/999999/{path}", headers=api_headers).status_code == 404
    assert client.get(f"/api/incidents/1/{path}", headers={}).status_code == 401
    for query in ("limit=0", "limit=1001", "cursor=%%%"):
        response = client.get(f"/api/incidents/1/{path}?{query}", headers=api_headers)
        assert response.status_code == 422, (query, response.text)


@pytest.mark.parametrize("query", ["alerts_limit=0", "timeline_limit=1001", "alerts_limit=x"])
def test_bad_limits_on_the_incident_are_422(client, api_headers, query):
    assert client.get(f"/api/incidents/1?{query}", headers=api_headers).status_code == 422
    assert client.get(f"/api/incidents?{query}", headers=api_headers).status_code == 422
