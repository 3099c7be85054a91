"""Every route needs its own token, except the few that must answer without one.

The routes come from the application itself (its route table and its OpenAPI
schema), so a route added later without authentication fails here without
anyone having to remember to list it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.conftest import API_TOKEN, WEBHOOK_TOKEN
from tests.security.conftest import METRICS_TOKEN

pytestmark = [pytest.mark.security, pytest.mark.timeout(120)]

# Probes and FastAPI's own documentation of the schema (INTERFACE: `GET /docs`).
OPEN = {"/healthz", "/readyz"}
DOCS = {"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
PARAM = re.compile(r"\{[^}]+\}")
# Routes a service signs its requests to, with a secret of its own instead of a
# token (tests/slack covers their refusals).
SIGNED = {"/slack/interactions"}


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # the template, "/api/incidents/{incident_id}"

    def url(self, value: str = "1") -> str:
        return PARAM.sub(value, self.path)

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def endpoints(app: FastAPI) -> list[Endpoint]:
    """Every method of every route the app serves, from its route table and its schema."""
    found: set[Endpoint] = set()
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI before included routers were kept lazily
        routes = [(getattr(r, "path", None), getattr(r, "methods", None)) for r in app.routes]
    else:
        routes = [(c.path, c.methods) for c in iter_route_contexts(app.routes)]
    for path, methods in routes:
        assert path is not None, "a route without a path (a mount?): teach this test about it"
        for method in methods or {"GET"}:
            found.add(Endpoint(method, path))
    for path, operations in app.openapi()["paths"].items():
        for method in operations:
            found.add(Endpoint(method.upper(), path))
    return sorted(found, key=lambda e: (e.path, e.method))


def token_for(endpoint: Endpoint, metrics_token: str | None) -> str | None:
    """The one token this route accepts; None for routes open to all or signed."""
    if endpoint.path in OPEN | DOCS | SIGNED:
        return None
    if endpoint.path == "/metrics":
        return metrics_token
    if endpoint.path.startswith("/webhooks/"):
        return WEBHOOK_TOKEN
    # /api/* and anything added later: the API token, unless someone decides otherwise here.
    return API_TOKEN


def refused_credentials(right: str) -> dict[str, dict[str, str]]:
    """Headers that must not get in: none, wrong, the other routes' tokens, the
    right token in the wrong scheme or with something appended."""
    others = {"webhook token": WEBHOOK_TOKEN, "api token": API_TOKEN, "metrics token": METRICS_TOKEN}
    refused = {
        "no header": {},
        "empty bearer": {"Authorization": "Bearer "},
        "wrong token": {"Authorization": "Bearer not-the-token"},
        "basic scheme": {"Authorization": f"Basic {right}"},
        "no scheme": {"Authorization": right},
        "token with a suffix": {"Authorization": f"Bearer {right}x"},
        "token prefix": {"Authorization": f"Bearer {right[:-1]}"},
    }
    for name, token in others.items():
        if token != right:
            refused[name] = {"Authorization": f"Bearer {token}"}
    return refused


def send(client: TestClient, endpoint: Endpoint, headers: dict[str, str], *, value: str = "1"):
    return client.request(endpoint.method, endpoint.url(value), headers=headers)


def test_the_app_serves_the_routes_this_suite_knows_about(api_client):
    client, _ = api_client
    paths = {e.path for e in endpoints(client.app)}
    # A sanity check on the enumeration itself, not a list to keep in step.
    assert {"/webhooks/alertmanager", "/api/incidents", "/api/incidents/{incident_id}",
            "/api/breakers", "/metrics", "/healthz", "/readyz"} <= paths


def test_every_route_but_the_probes_refuses_a_missing_or_wrong_token(api_client):
    client, metrics_token = api_client
    checked = []
    for endpoint in endpoints(client.app):
        right = token_for(endpoint, metrics_token)
        if right is None:
            continue
        for name, headers in refused_credentials(right).items():
            response = send(client, endpoint, headers)
            assert response.status_code == 401, (
                f"{endpoint} with {name}: {response.status_code} {response.text[:200]}"
            )
            assert response.headers.get("www-authenticate") == "Bearer", endpoint
            assert set(response.json()) == {"error"}, response.text
        # The right token gets past authentication (into a 404, a 415, a 200…).
        response = send(client, endpoint, {"Authorization": f"Bearer {right}"})
        assert response.status_code != 401, f"{endpoint} refused its own token: {response.text}"
        checked.append(str(endpoint))
    assert any(e.startswith("POST /webhooks/") for e in checked)
    assert any(e.startswith("GET /api/") for e in checked)
    assert ("GET /metrics" in checked) == (metrics_token is not None)


def test_authentication_comes_before_anything_is_read_or_validated(api_client):
    """Without a token, a malformed id, body or size gets a 401, never a 404/413/422
    that would tell a stranger something."""
    client, metrics_token = api_client
    oversized = b"{" + b" " * (6 * 1024 * 1024) + b"}"
    for endpoint in endpoints(client.app):
        if token_for(endpoint, metrics_token) is None:
            continue
        for value in ("0", "not-a-number", "9" * 40):
            response = send(client, endpoint, {}, value=value)
            assert response.status_code == 401, f"{endpoint} with {value!r}: {response.status_code}"
        if endpoint.method == "POST":
            for body, content_type in ((oversized, "application/json"), (b"<xml/>", "text/xml")):
                response = client.post(
                    endpoint.url(), content=body, headers={"Content-Type": content_type}
                )
                assert response.status_code == 401, f"{endpoint}: {response.status_code}"


def test_the_probes_and_the_schema_answer_without_a_token_and_are_read_only(api_client):
    client, metrics_token = api_client
    open_paths = OPEN | DOCS | ({"/metrics"} if metrics_token is None else set())
    served = {e.path: e for e in endpoints(client.app) if e.path in open_paths}
    assert set(served) >= OPEN | ({"/metrics"} if metrics_token is None else set())
    for endpoint in endpoints(client.app):
        if endpoint.path in open_paths:
            assert endpoint.method in ("GET", "HEAD"), f"{endpoint} is open and not read-only"
            response = send(client, endpoint, {})
            assert response.status_code in (200, 503), f"{endpoint}: {response.status_code}"


def _client_with(**tokens: str) -> TestClient:
    from pydantic import SecretStr

    from incident.api.app import create_app
    from incident.config import get_settings

    settings = get_settings().model_copy(
        update={name: SecretStr(value) for name, value in tokens.items()}
    )
    return TestClient(create_app(settings))


def test_a_configured_token_with_surrounding_blanks_matches_the_token(clean_state):
    # As a token pasted into an env file or a secret with its newline arrives.
    with _client_with(webhook_token=f" {WEBHOOK_TOKEN}\n", api_token=f"\t{API_TOKEN}  ") as client:
        for token in (API_TOKEN, f"{API_TOKEN} "):
            response = client.get("/api/incidents", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 200, response.text
        response = client.post(
            "/webhooks/alertmanager", content=b"{}",
            headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}", "Content-Type": "application/json"},
        )
        assert response.status_code == 422  # past authentication
        wrong = client.get("/api/incidents", headers={"Authorization": f"Bearer {API_TOKEN}x"})
        assert wrong.status_code == 401


def test_a_blank_configured_token_lets_nobody_in(clean_state):
    with _client_with(api_token="  \n") as client:
        for header in ("Bearer ", "Bearer   ", f"Bearer {API_TOKEN}"):
            response = client.get("/api/incidents", headers={"Authorization": header})
            assert response.status_code == 401, header
