"""End to end: an incident opened by a webhook pages PagerDuty with a link to its console
page; Acknowledge in the console is recorded as the user and reaches PagerDuty, through a
real worker and the real PagerDuty client talking to a fake PagerDuty."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr

from incident.api.app import create_app
from incident.config import get_settings
from tests.conftest import WEBHOOK_TOKEN, WorkerProcess, wait_for
from tests.console.conftest import LOCAL_EMAIL, csrf_of
from tests.factories import alert, payload
from tests.fakes.pagerduty import DEFAULT_ROUTING_KEY, FakePagerDuty

PUBLIC_URL = "https://incident.example.com"
RULES = "escalation:\n  SEV2: {pagerduty: error, ack_timeout: 1h}\n"

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def fake_pagerduty() -> Iterator[FakePagerDuty]:
    with FakePagerDuty() as pagerduty:
        yield pagerduty


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rules") / "rules.yml"
    path.write_text(RULES)
    return path


@pytest.fixture(scope="module")
def paging_worker(incident_environment, fake_pagerduty, rules_file, tmp_path_factory):
    env = {
        **incident_environment,
        "INCIDENT_PAGERDUTY_ROUTING_KEY": DEFAULT_ROUTING_KEY,
        "INCIDENT_PAGERDUTY_EVENTS_URL": fake_pagerduty.url,
        "SSL_CERT_FILE": fake_pagerduty.ca_path,
        "INCIDENT_RULES_FILE": str(rules_file),
        "INCIDENT_PUBLIC_URL": PUBLIC_URL,
    }
    redis.Redis.from_url(env["INCIDENT_BROKER_URL"]).flushdb()
    process = WorkerProcess(env, tmp_path_factory.mktemp("worker") / "worker.log")
    process.wait_ready()
    yield process
    process.stop()


@pytest.fixture
def paging_console(clean_state, paging_worker, fake_pagerduty, rules_file) -> Iterator[TestClient]:
    settings = get_settings().model_copy(update={
        "dev_mode": True, "public_url": PUBLIC_URL, "rules_file": rules_file,
        "pagerduty_routing_key": SecretStr(DEFAULT_ROUTING_KEY),
        "pagerduty_events_url": fake_pagerduty.url,
    })
    # An https public URL makes the session cookie Secure: the client speaks https too.
    with TestClient(create_app(settings), base_url="https://testserver") as client:
        client.get("/login")
        yield client


def test_acknowledge_in_the_console_reaches_pagerduty_whose_page_links_back(
    paging_console, fake_pagerduty
):
    seen = len(fake_pagerduty.events)
    body = payload(alert(severity="critical", service="checkout"))
    accepted = paging_console.post("/webhooks/alertmanager", json=body,
                                   headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"})
    assert accepted.status_code == 202

    trigger = wait_for(lambda: next((e for e in fake_pagerduty.events[seen:]
                                     if e["event_action"] == "trigger"), None),
                       timeout=30, what="the PagerDuty trigger")
    listed = paging_console.get("/api/incidents", headers=_api()).json()["items"]
    [incident] = [i for i in listed if i["key"] == trigger["dedup_key"]]
    page = f"/incidents/{incident['id']}"
    assert trigger["links"][0]["href"] == f"{PUBLIC_URL}{page}"
    assert trigger["client_url"] == f"{PUBLIC_URL}{page}"

    answer = paging_console.post(f"{page}/acknowledge", data={"csrf": csrf_of(paging_console, page)})

    assert answer.status_code == 200 and "acknowledged." in answer.text
    wait_for(lambda: [e["event_action"] for e in fake_pagerduty.events[seen:]
                      if e["dedup_key"] == incident["key"]] == ["trigger", "acknowledge"],
             timeout=30, what="the PagerDuty acknowledge")
    shown = paging_console.get(f"/api/incidents/{incident['id']}", headers=_api()).json()
    assert shown["acknowledged_by"] == {"by": "web", "user": LOCAL_EMAIL, "name": LOCAL_EMAIL}


def _api() -> dict[str, str]:
    from tests.conftest import API_TOKEN

    return {"Authorization": f"Bearer {API_TOKEN}"}
