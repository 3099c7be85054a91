"""schemathesis against our own OpenAPI document, every operation, through the real app.

The document is built at import from the same routers ``create_app`` mounts
(``test_the_fuzzed_document_is_the_one_the_app_serves`` keeps the two equal),
because schemathesis' lazy ``from_fixture`` loader reads ``request.node._nodeid``,
which pytest 9 no longer has. The app answering is ``create_app`` on the test
PostgreSQL and Redis, with tokens supplied.

The webhook route reads its body itself, so the served document declares no
request body; the test adds the version-4 payload schema when it is absent, so
schemathesis sends payloads rather than empty bodies.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from incident.alerts.schemas import WebhookPayload
from incident.api import (
    breakers, health, incidents, maintenance, pagerduty, silences, slack, webhooks,
)
from incident.api.app import create_app
from incident.config import Settings, get_settings
from tests.conftest import API_TOKEN, WEBHOOK_TOKEN
from tests.factories import alert, payload

pytestmark = pytest.mark.fuzz

WEBHOOK = "/webhooks/alertmanager"
EXAMPLES = 30
SETTINGS = settings(
    max_examples=EXAMPLES, derandomize=True, database=None, deadline=None, print_blob=False,
    suppress_health_check=list(HealthCheck),
)


def _served_routes() -> FastAPI:
    app = FastAPI(title="incident")
    for module in (webhooks, pagerduty, incidents, silences, maintenance, slack, breakers,
                   health):
        app.include_router(module.router)
    return app


def openapi_document() -> dict[str, Any]:
    document = _served_routes().openapi()
    operation = document["paths"][WEBHOOK]["post"]
    if "requestBody" not in operation:
        body = WebhookPayload.model_json_schema(
            by_alias=True, ref_template="#/components/schemas/{model}"
        )
        components = document.setdefault("components", {}).setdefault("schemas", {})
        components.update(body.pop("$defs", {}))
        components["WebhookPayload"] = body
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/WebhookPayload"}}},
        }
    return document


def _config(mode: str) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {"seed": 20261122, "generation": {"max-examples": EXAMPLES, "mode": mode}}
    )


every_input = schemathesis.openapi.from_dict(openapi_document(), config=_config("all"))
valid_input = schemathesis.openapi.from_dict(openapi_document(), config=_config("positive"))
invalid_input = schemathesis.openapi.from_dict(openapi_document(), config=_config("negative"))

# What the document does not declare yet (see the report): 404/409 on the incident
# routes, and /metrics's text/plain. Everything else must already conform.
UNDECLARED = r"^/api/incidents/\{incident_id\}|^/metrics$"


@pytest.fixture(scope="module")
def app(incident_environment: dict[str, str]) -> FastAPI:
    # PagerDuty's route on: unsigned, generated bodies must meet its 401, never a 5xx.
    return create_app(Settings.model_validate(
        {**get_settings().model_dump(), "pagerduty_webhook_secret": "fuzzed-webhook-secret"}
    ))


@pytest.fixture(scope="module")
def some_incidents(app: FastAPI, database_url: str, redis_url: str) -> list[int]:
    """A few incidents, so acknowledge/resolve and the detail route meet real ids (1, 2, 3)."""
    from sqlalchemy import text

    from incident.db import engine_for
    from tests.conftest import TABLES
    from tests.fuzz.test_api_inputs import apply_webhook

    with engine_for(database_url).begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    # The repeat cache too, or a re-run would find these webhooks already applied.
    redis.Redis.from_url(redis_url).flushdb()
    return [apply_webhook(payload(alert(instance=f"st-{n}"), group_labels={"n": str(n)}))
            for n in range(3)]


def authorized(case: schemathesis.Case) -> dict[str, str]:
    token = WEBHOOK_TOKEN if case.path == WEBHOOK else API_TOKEN
    return {"Authorization": f"Bearer {token}"}


def test_the_fuzzed_document_is_the_one_the_app_serves(app: FastAPI):
    served = app.openapi()
    fuzzed = openapi_document()
    assert {p: sorted(ops) for p, ops in served["paths"].items()} == {
        p: sorted(ops) for p, ops in fuzzed["paths"].items()
    }
    for path, operations in served["paths"].items():
        for method, operation in operations.items():
            assert operation["responses"] == fuzzed["paths"][path][method]["responses"], (method, path)


@every_input.parametrize()
@SETTINGS
def test_no_operation_answers_a_server_error(case, app, some_incidents):
    """Valid and invalid input alike: 503 only if a dependency is down, and here none is."""
    response = case.call(app=app, headers=authorized(case))
    case.validate_response(response, checks=[not_a_server_error])


@valid_input.exclude(path_regex=UNDECLARED).parametrize()
@SETTINGS
def test_answers_match_the_declared_statuses_types_and_schemas(case, app, some_incidents):
    response = case.call(app=app, headers=authorized(case))
    case.validate_response(
        response,
        checks=[status_code_conformance, content_type_conformance, response_schema_conformance],
    )


@valid_input.include(path_regex=UNDECLARED).parametrize()
@SETTINGS
def test_undeclared_answers_on_incident_routes_and_metrics(case, app, some_incidents):
    response = case.call(app=app, headers=authorized(case))
    case.validate_response(
        response,
        checks=[status_code_conformance, content_type_conformance, response_schema_conformance],
    )


@invalid_input.include(path=WEBHOOK).parametrize()
@SETTINGS
def test_schema_violating_webhooks_are_rejected(case, app, some_incidents):
    response = case.call(app=app, headers=authorized(case))
    case.validate_response(response, checks=[not_a_server_error, negative_data_rejection])


SLACK = "/slack/interactions"


@pytest.fixture(scope="module")
def slack_app(incident_environment: dict[str, str]) -> FastAPI:
    return create_app(Settings(slack_signing_secret="fuzz-signing-secret"))


@every_input.include(path=SLACK).parametrize()
@SETTINGS
def test_slack_interactions_with_a_secret_refuse_unsigned_input_as_documented(case, slack_app):
    """With the secret set, schemathesis' (unsigned) forms, and other methods, are refused, never a 5xx."""
    response = case.call(app=slack_app)
    assert response.status_code in {401, 405, 413}, response.text[:300]
    case.validate_response(
        response, checks=[not_a_server_error, status_code_conformance, content_type_conformance]
    )
