"""A real Alertmanager per module, incidents whose group it can silence, and the api
pointed at it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from incident.alerts.schemas import WebhookPayload
from incident.api.app import create_app
from incident.config import get_settings
from incident.db import session_scope
from incident.incidents.grouping import apply_webhook
from incident.rules import load_rules
from tests.alertmanager_support import AlertmanagerProcess
from tests.conftest import API_TOKEN
from tests.factories import alert, payload

RULES = load_rules(None)
HEADERS = {"Authorization": f"Bearer {API_TOKEN}"}


def client_for(alertmanager_url: str | None) -> TestClient:
    settings = get_settings().model_copy(update={"alertmanager_url": alertmanager_url})
    return TestClient(create_app(settings))


@pytest.fixture
def silencing_client(clean_state: None, real_alertmanager: AlertmanagerProcess) -> Iterator[TestClient]:
    """The real app, its INCIDENT_ALERTMANAGER_URL the module's Alertmanager."""
    with client_for(real_alertmanager.url) as client:
        yield client


def open_incident(service: str | None = None) -> tuple[int, str]:
    """An incident of group {alertname="HighErrorRate", service=…}; a service of its own
    for each test, since the Alertmanager outlives them."""
    service = service or f"api-{uuid.uuid4().hex[:8]}"
    body = payload(alert(service=service),
                   group_labels={"alertname": "HighErrorRate", "service": service})
    with session_scope() as session:
        change = apply_webhook(session, WebhookPayload.model_validate(body), RULES)
    assert change.incident_id is not None
    return change.incident_id, service


def silences_for(alertmanager_url: str, service: str) -> list[dict[str, Any]]:
    """The silences in Alertmanager matching that service, expired ones too (incident ids
    start again in each test; the services do not)."""
    listed = httpx.get(f"{alertmanager_url}/api/v2/silences", timeout=5).json()
    return [s for s in listed
            if {"name": "service", "value": service} in
            [{"name": m["name"], "value": m["value"]} for m in s["matchers"]]]


def alert_state(alertmanager_url: str, service: str) -> str | None:
    """``active`` or ``suppressed``: how Alertmanager sees the alert of that service."""
    listed = httpx.get(
        f"{alertmanager_url}/api/v2/alerts", params={"filter": f'service="{service}"'}, timeout=5
    ).json()
    return listed[0]["status"]["state"] if listed else None
