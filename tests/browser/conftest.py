"""The console in a real browser: Debian's Chromium driven by Playwright, against a real
``incident api`` and ``incident worker``, signing in through the fake OpenID Connect
provider, paging the fake PagerDuty and silencing in the real Alertmanager."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from incident.embedded import free_port
from tests.alertmanager_support import AlertmanagerProcess
from tests.conftest import (
    API_TOKEN,
    WEBHOOK_TOKEN,
    ApiProcess,
    WorkerProcess,
    empty_state,
    wait_for,
)
from tests.factories import alert, payload
from tests.fakes.oidc import CLIENT_ID, CLIENT_SECRET, FakeOIDCProvider
from tests.fakes.pagerduty import DEFAULT_ROUTING_KEY, FakePagerDuty

# `make screenshots` points this at docs/screenshots, for the README; a test run
# otherwise leaves the committed pictures alone.
SCREENSHOTS = Path(
    os.environ.get("INCIDENT_TEST_SCREENSHOTS")
    or Path(tempfile.gettempdir()) / "incident-screenshots"
)
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# SEV1 and SEV2 page PagerDuty; an acknowledgement stops nothing the test waits for.
RULES = "escalation:\n  SEV1: {pagerduty: critical, ack_timeout: 1h}\n  SEV2: {pagerduty: error, ack_timeout: 1h}\n"
SESSION_SECRET = "browser-test-session-secret-8e2a"
WAIT_MS = 30_000


@pytest.fixture(scope="session")
def chromium_binary() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    reason = (
        "Chromium is not installed (no `chromium` on PATH); run `make test`, which "
        "installs Debian's chromium package (Playwright drives that one, never its own build)"
    )
    if os.environ.get("INCIDENT_TEST_SKIP_BROWSER") == "1":
        pytest.skip(f"INCIDENT_TEST_SKIP_BROWSER=1: {reason}")
    pytest.fail(reason, pytrace=False)


@pytest.fixture(scope="module")
def chromium(chromium_binary: str) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_binary,
            headless=True,
            # As root, Chromium refuses to start inside its own sandbox.
            args=["--no-sandbox"] if os.geteuid() == 0 else [],
            timeout=WAIT_MS,
        )
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class ConsoleStack:
    api: ApiProcess
    worker: WorkerProcess
    provider: FakeOIDCProvider
    pagerduty: FakePagerDuty
    alertmanager: AlertmanagerProcess

    def open_incident(self, *, severity: str = "critical", alertname: str = "HighErrorRate",
                      service: str | None = None, summary: str = "5xx above 5%") -> dict[str, Any]:
        """POST an Alertmanager webhook for a group of its own; the incident the worker made."""
        service = service or f"checkout-{uuid.uuid4().hex[:6]}"
        body = payload(
            alert(alertname=alertname, service=service, severity=severity, env="prod",
                  annotations={"summary": summary}),
            group_labels={"alertname": alertname, "service": service},
        )
        answer = httpx.post(f"{self.api.url}/webhooks/alertmanager", json=body, timeout=10,
                            headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"})
        assert answer.status_code == 202, answer.text
        return wait_for(lambda: self.incident_of(service), timeout=30,
                        what=f"the incident of service {service}")

    def incident_of(self, service: str) -> dict[str, Any] | None:
        self.worker.check_alive()
        listed = httpx.get(f"{self.api.url}/api/incidents", params={"limit": 500}, timeout=10,
                           headers={"Authorization": f"Bearer {API_TOKEN}"}).json()["items"]
        return next((i for i in listed if i["labels"].get("service") == service), None)

    def pagerduty_actions(self, key: str) -> list[str]:
        return [e["event_action"] for e in self.pagerduty.events if e["dedup_key"] == key]


@pytest.fixture(scope="module")
def console_stack(
    incident_environment: dict[str, str], database_url: str, redis_url: str,
    real_alertmanager: AlertmanagerProcess, tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ConsoleStack]:
    empty_state(database_url, redis.Redis.from_url(redis_url))
    logs = tmp_path_factory.mktemp("browser")
    rules = logs / "rules.yml"
    rules.write_text(RULES)
    port = free_port()
    with FakeOIDCProvider() as provider, FakePagerDuty() as pagerduty:
        env = {
            **incident_environment,
            "INCIDENT_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "INCIDENT_OIDC_ISSUER": provider.issuer,
            "INCIDENT_OIDC_CLIENT_ID": CLIENT_ID,
            "INCIDENT_OIDC_CLIENT_SECRET": CLIENT_SECRET,
            "INCIDENT_SESSION_SECRET": SESSION_SECRET,
            "INCIDENT_PAGERDUTY_ROUTING_KEY": DEFAULT_ROUTING_KEY,
            "INCIDENT_PAGERDUTY_EVENTS_URL": pagerduty.url,
            "SSL_CERT_FILE": pagerduty.ca_path,
            "INCIDENT_ALERTMANAGER_URL": real_alertmanager.url,
            "INCIDENT_RULES_FILE": str(rules),
        }
        worker = WorkerProcess(env, logs / "worker.log")
        api = ApiProcess(env, logs / "api.log", port=port)
        try:
            worker.wait_ready()
            api.wait_ready()
            yield ConsoleStack(api, worker, provider, pagerduty, real_alertmanager)
        finally:
            api.stop()
            worker.stop()


def sign_in(context: BrowserContext, stack: ConsoleStack, path: str = "/") -> Page:
    """A page of ``context`` that asked for ``path`` and came back to it through the provider."""
    page = context.new_page()
    page.goto(stack.api.url + path)
    page.wait_for_url(stack.api.url + path, timeout=WAIT_MS)
    return page


@pytest.fixture(scope="module")
def signed_in(chromium: Browser, console_stack: ConsoleStack) -> Iterator[BrowserContext]:
    """A desktop browser signed in as the provider's user."""
    context = chromium.new_context(viewport=DESKTOP)
    context.set_default_timeout(WAIT_MS)
    sign_in(context, console_stack).close()
    try:
        yield context
    finally:
        context.close()


def screenshot(page: Page, name: str) -> None:
    """The console as people see it (``make screenshots``: docs/screenshots/NAME.png)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
