from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from incident.api.app import create_app
from incident.config import get_settings
from incident.embedded import EmbeddedRedis
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


@pytest.fixture
def own_broker() -> Iterator[EmbeddedRedis]:
    """A Redis of the test's own, to stop while the api runs."""
    path = Path(tempfile.mkdtemp(prefix="incident-test-broker-"))
    broker = EmbeddedRedis(path)
    broker.start()
    yield broker
    broker.stop()
    shutil.rmtree(path, ignore_errors=True)
