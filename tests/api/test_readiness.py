"""/readyz names what failed, never where it is or who we log in as: that is for the log."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from incident.embedded import free_port
from tests.conftest import ApiProcess

pytestmark = pytest.mark.timeout(120)

ROLE = "readyz_ghost_role_7c1f"


def readiness(env: dict[str, str], log_path: Path) -> tuple[httpx.Response, str]:
    api = ApiProcess(env, log_path)
    try:
        api.wait_ready()
        response = httpx.get(f"{api.url}/readyz", timeout=30)
        # Written before the answer, but give the file a moment all the same.
        deadline = time.monotonic() + 5
        while "readiness" not in api.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        return response, api.log()
    finally:
        api.stop()


def test_closed_ports_are_named_as_dependencies_only(incident_environment, tmp_path):
    database_port, broker_port = free_port(), free_port()
    env = {
        **incident_environment,
        "INCIDENT_DATABASE_URL": f"postgresql+psycopg://{ROLE}@127.0.0.1:{database_port}/incident",
        "INCIDENT_BROKER_URL": f"redis://127.0.0.1:{broker_port}/0",
        "INCIDENT_REDIS_URL": f"redis://127.0.0.1:{broker_port}/0",
    }
    response, log = readiness(env, tmp_path / "api.log")

    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "failed": ["database", "broker"]}
    for detail in ("127.0.0.1", str(database_port), str(broker_port), ROLE):
        assert detail not in response.text
    assert str(database_port) in log
    assert str(broker_port) in log


def test_a_wrong_role_is_named_in_the_log_not_the_answer(incident_environment, tmp_path):
    real = make_url(incident_environment["INCIDENT_DATABASE_URL"])
    wrong_role = real.set(username=ROLE, password=None).render_as_string(hide_password=False)
    env = {**incident_environment, "INCIDENT_DATABASE_URL": wrong_role}
    response, log = readiness(env, tmp_path / "api.log")

    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "failed": ["database"]}
    for detail in (ROLE, str(real.host), str(real.port), str(real.database)):
        assert detail not in response.text
    assert ROLE in log
