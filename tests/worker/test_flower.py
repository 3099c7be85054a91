"""Flower against the test broker: it lists the tasks a real worker ran, by name, with safe arguments."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import httpx
import pytest

from incident.embedded import free_port
from tests import factories
from tests.conftest import ApiProcess, ChildProcess, WorkerProcess, wait_for
from tests.notifications.support import post

LOGIN = ("operator", "flower-pass-3c1d")


class FlowerProcess(ChildProcess):
    name = "flower"

    def __init__(self, env: dict[str, str], log_path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            [sys.executable, "-m", "celery", "-A", "incident.worker", "flower",
             f"--port={self.port}", "--address=127.0.0.1"],
            log_path,
            {**env, "FLOWER_BASIC_AUTH": ":".join(LOGIN)},
        )

    def wait_ready(self) -> None:
        def answers() -> bool:
            self.check_alive()
            try:
                return httpx.get(f"{self.url}/healthcheck", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(answers, timeout=30, what="flower")


@pytest.fixture(scope="module")
def flower(incident_environment, tmp_path_factory) -> Iterator[FlowerProcess]:
    process = FlowerProcess(incident_environment, tmp_path_factory.mktemp("flower") / "flower.log")
    process.wait_ready()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def api(incident_environment, tmp_path_factory) -> Iterator[ApiProcess]:
    process = ApiProcess(incident_environment, tmp_path_factory.mktemp("api") / "api.log")
    process.wait_ready()
    yield process
    process.stop()


def test_flower_lists_a_processed_task_by_name_with_a_summary_not_the_payload(
    clean_state, flower, worker: WorkerProcess, api, incident_environment
):
    body = factories.payload(factories.alert(service="flower-check"))
    post(api, body)

    def ingested():
        response = httpx.get(f"{flower.url}/api/tasks", auth=LOGIN, timeout=5,
                             params={"taskname": "incident.incidents.ingest_webhook"})
        assert response.status_code == 200, response.text
        done = [t for t in response.json().values() if t.get("state") == "SUCCESS"]
        return done or None

    (task,) = wait_for(ingested, timeout=30, interval=0.5, what="the task in Flower")
    assert task["name"] == "incident.incidents.ingest_webhook"
    assert task["kwargs"].startswith("{'group': ")
    assert "'alerts': 1" in task["kwargs"] and "'status': 'firing'" in task["kwargs"]
    shown = str(task)
    assert "flower-check" not in shown, "the payload's labels must not reach Flower"
    for secret in (incident_environment["INCIDENT_WEBHOOK_TOKEN"],
                   incident_environment["INCIDENT_API_TOKEN"]):
        assert secret not in shown


def test_flower_asks_for_its_login(flower):
    assert httpx.get(f"{flower.url}/api/tasks", timeout=5).status_code == 401
