"""Shared by the security suite: the app as the api process builds it, and
secrets that are easy to recognise in any text they might leak into."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import quote, quote_plus

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from incident.api.app import create_app
from incident.config import Settings, get_settings

METRICS_TOKEN = "test-metrics-token-41d7"


def make_client(*, metrics_token: str | None) -> TestClient:
    settings: Settings = get_settings().model_copy(
        update={"metrics_token": SecretStr(metrics_token) if metrics_token else None}
    )
    return TestClient(create_app(settings), raise_server_exceptions=True)


@pytest.fixture(params=["metrics open", "metrics token"])
def api_client(request, clean_state) -> Iterator[tuple[TestClient, str | None]]:
    """The app in-process, without and with INCIDENT_METRICS_TOKEN."""
    token = METRICS_TOKEN if request.param == "metrics token" else None
    with make_client(metrics_token=token) as client:
        yield client, token


def recognisable_secret(kind: str) -> str:
    """A secret no other text contains by chance, with characters that URL- and
    JSON-encoding change, so an escaped copy is not missed either."""
    return f"{kind}+S3CR3T/{uuid.uuid4().hex[:12]}=x"


def spellings(secret: str) -> set[str]:
    """The secret as written, and as a URL, a form or JSON would carry it."""
    return {secret, quote(secret, safe=""), quote(secret), quote_plus(secret),
            secret.replace("/", "\\/")}
