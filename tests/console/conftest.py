from __future__ import annotations

import re

from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from incident.alerts.schemas import WebhookPayload
from incident.api.app import create_app
from incident.config import get_settings
from incident.console.local import LOCAL_USER
from incident.db import session_scope
from incident.incidents.grouping import apply_webhook
from incident.rules import load_rules
from tests.factories import T0, alert, payload
from tests.fakes.oidc import FakeOIDCProvider

RULES = load_rules(None)
LOCAL_EMAIL = LOCAL_USER.email


def console_client(**settings: object) -> TestClient:
    """The real app, in `incident dev`'s sign-in mode unless told otherwise."""
    return TestClient(create_app(get_settings().model_copy(update={"dev_mode": True, **settings})))


@pytest.fixture
def console(clean_state) -> Iterator[TestClient]:
    """Signed out."""
    with console_client() as client:
        yield client


@pytest.fixture
def signed_in(console: TestClient) -> TestClient:
    assert console.get("/login", follow_redirects=False).status_code == 303
    return console


def open_incident(n: int, *, at=None, group: dict[str, str] | None = None, **labels: str) -> int:
    """An incident opened through the grouping code, as Alertmanager's webhook would."""
    body = payload(
        alert(instance=str(n), **labels),
        group_labels=group or {"alertname": "Down", "n": str(n)},
    )
    with session_scope() as session:
        change = apply_webhook(
            session, WebhookPayload.model_validate(body), RULES,
            now=at or T0 + timedelta(seconds=n),
        )
    return change.incident_id


def payload_with(rules, *, annotations: dict[str, str], n: int = 1) -> int:
    """An incident whose alert carries these annotations."""
    body = payload(alert(instance=str(n), annotations=annotations),
                   group_labels={"alertname": "Down", "n": str(n)})
    with session_scope() as session:
        return apply_webhook(session, WebhookPayload.model_validate(body), rules,
                             now=T0 + timedelta(seconds=n)).incident_id


def csrf_of(client: TestClient, page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get(page).text)
    assert found, "the page carries no CSRF token"
    return found.group(1)


@pytest.fixture(scope="module")
def oidc_provider_server() -> Iterator[FakeOIDCProvider]:
    with FakeOIDCProvider() as provider:
        yield provider


@pytest.fixture
def oidc_provider(oidc_provider_server: FakeOIDCProvider) -> FakeOIDCProvider:
    """The fake provider, issuing honest tokens for alice@example.com."""
    oidc_provider_server.reset()
    return oidc_provider_server
