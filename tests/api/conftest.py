from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from incident.api.app import create_app
from incident.config import get_settings
from tests.conftest import API_TOKEN, WEBHOOK_TOKEN


@pytest.fixture
def client(clean_state) -> TestClient:
    with TestClient(create_app(get_settings())) as test_client:
        yield test_client


@pytest.fixture
def webhook_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {WEBHOOK_TOKEN}", "Content-Type": "application/json"}


@pytest.fixture
def api_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_TOKEN}"}
