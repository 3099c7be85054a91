"""`incident pagerduty subscribe` against a fake PagerDuty REST API, through the real client."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from incident.notifications.pagerduty_events import SUBSCRIBED
from tests.fakes.pagerduty import DEFAULT_API_KEY, FakePagerDuty

PUBLIC_URL = "https://incident.example.com"


@pytest.fixture(scope="module")
def fake_pagerduty() -> Iterator[FakePagerDuty]:
    with FakePagerDuty(services={"PSVC001": "Checkout API"}) as pagerduty:
        yield pagerduty


def subscribe(fake: FakePagerDuty, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        "INCIDENT_PAGERDUTY_API_KEY": DEFAULT_API_KEY,
        "INCIDENT_PAGERDUTY_API_URL": fake.url,
        "INCIDENT_PUBLIC_URL": PUBLIC_URL,
        # The command trusts the fake's throwaway CA, and only it.
        "SSL_CERT_FILE": fake.ca_path,
        **env,
    }
    environment = {name: value for name, value in environment.items() if value}
    return subprocess.run(
        [sys.executable, "-m", "incident", "pagerduty", "subscribe", *args],
        env=environment, capture_output=True, text=True, timeout=60,
    )


def test_subscribe_creates_the_subscription_and_prints_its_secret(fake_pagerduty):
    done = subscribe(fake_pagerduty, "--service", "PSVC001")

    assert done.returncode == 0, done.stderr
    [created] = fake_pagerduty.subscriptions[-1:]
    assert created["delivery_method"]["url"] == f"{PUBLIC_URL}/webhooks/pagerduty"
    assert created["delivery_method"]["type"] == "http_delivery_method"
    assert created["filter"] == {"type": "service_reference", "id": "PSVC001"}
    assert set(created["events"]) == set(SUBSCRIBED)
    assert {"incident.acknowledged", "incident.unacknowledged", "incident.resolved",
            "incident.escalated", "incident.reassigned", "incident.delegated",
            "incident.annotated"} <= set(created["events"])
    secret = created["delivery_method"]["secret"]
    assert f"INCIDENT_PAGERDUTY_WEBHOOK_SECRET={secret}" in done.stdout
    assert "Checkout API" in done.stdout
    # The key went only where PagerDuty expects it.
    [request] = fake_pagerduty.calls("/webhook_subscriptions")[-1:]
    assert request.headers["authorization"] == f"Token token={DEFAULT_API_KEY}"
    assert DEFAULT_API_KEY not in done.stdout + done.stderr


def test_an_unknown_service_is_named(fake_pagerduty):
    before = len(fake_pagerduty.subscriptions)
    done = subscribe(fake_pagerduty, "--service", "PNOPE99")
    assert done.returncode == 1
    assert "no service PNOPE99 (404)" in done.stderr
    assert len(fake_pagerduty.subscriptions) == before


def test_a_refused_key_says_so(fake_pagerduty):
    done = subscribe(fake_pagerduty, "--service", "PSVC001",
                     INCIDENT_PAGERDUTY_API_KEY="not-the-key")
    assert done.returncode == 1
    assert "refused the API key (401)" in done.stderr
    assert "INCIDENT_PAGERDUTY_API_KEY" in done.stderr
    assert "not-the-key" not in done.stderr


def test_without_a_key_it_names_the_setting(fake_pagerduty):
    before = len(fake_pagerduty.requests)
    done = subscribe(fake_pagerduty, "--service", "PSVC001", INCIDENT_PAGERDUTY_API_KEY="")
    assert done.returncode == 2
    assert "INCIDENT_PAGERDUTY_API_KEY is not set" in done.stderr
    assert len(fake_pagerduty.requests) == before


def test_a_public_url_pagerduty_cannot_reach_is_refused(fake_pagerduty):
    before = len(fake_pagerduty.requests)
    done = subscribe(fake_pagerduty, "--service", "PSVC001",
                     INCIDENT_PUBLIC_URL="http://127.0.0.1:8080")
    assert done.returncode == 2
    assert "INCIDENT_PUBLIC_URL" in done.stderr and "cannot reach" in done.stderr
    assert len(fake_pagerduty.requests) == before


def test_the_service_is_required():
    done = subprocess.run([sys.executable, "-m", "incident", "pagerduty", "subscribe"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--service" in done.stderr
