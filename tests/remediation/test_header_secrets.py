"""A header's ``{env.…}`` secret never reaches an error: not ``last_error``, the API, Slack or logs.

HTTP clients quote the offending bytes when a request or an answer breaks
the protocol. A header whose rendered value ends in a blank (from a label)
is such a request; a target that echoes what it got into a malformed answer
is such an answer. Either way the bytes hold the secret.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
import structlog
from fastapi.testclient import TestClient
from sqlalchemy import select

from incident.api.app import create_app
from incident.config import get_settings
from incident.db import session_scope
from incident.incidents.models import TimelineEntry
from incident.remediation.actions import perform
from incident.rules import parse_rules
from tests import factories
from tests.conftest import API_TOKEN
from tests.remediation.http_target import RecordingTarget
from tests.remediation.rule_builders import make_context, make_rule
from tests.remediation.test_engine import Harness, notifications, runs

SECRET = "s3cret-deploy-token-7f41"
HEADERS = {"X-Deploy-Token": "{env.DEPLOYER_TOKEN}{labels.suffix}"}


@pytest.fixture(autouse=True)
def deployer_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPLOYER_TOKEN", SECRET)


@pytest.fixture
def target() -> Iterator[RecordingTarget]:
    with RecordingTarget() as server:
        yield server


class EchoingTarget:
    """Answers each request with one malformed header line: the request itself, flattened."""

    def __enter__(self) -> EchoingTarget:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.listener.close()
        self.thread.join(timeout=5)

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                received = b""
                while b"\r\n\r\n" not in received:
                    chunk = connection.recv(65536)
                    if not chunk:
                        break
                    received += chunk
                head = received.split(b"\r\n\r\n")[0].replace(b"\r\n", b" ")
                connection.sendall(b"HTTP/1.1 200 OK\r\n" + head + b"\r\n\r\n")


@pytest.mark.parametrize("suffix", [" ", "\t", " x "])
def test_a_header_with_a_blank_at_its_end_is_refused_without_quoting_it(
    target: RecordingTarget, suffix: str
) -> None:
    rule = make_rule("http", url=f"{target.base}/restart", headers=HEADERS)
    outcome = perform(rule, make_context(rule, {"suffix": suffix}))
    assert (outcome.succeeded, outcome.retryable, outcome.reached_target) == (False, False, False)
    assert outcome.error == (
        "header 'X-Deploy-Token' would begin or end with a space or tab, "
        "which HTTP does not allow in a header value"
    )
    assert target.arrivals == []


def test_protocol_error_text_from_the_target_is_not_kept() -> None:
    with EchoingTarget() as echo:
        rule = make_rule("http", url=f"http://127.0.0.1:{echo.port}/restart", headers=HEADERS)
        outcome = perform(rule, make_context(rule, {"suffix": "-eu"}))
    assert outcome.succeeded is False
    assert outcome.error == (
        f"POST http://127.0.0.1:{echo.port}/restart failed: RemoteProtocolError"
    )
    assert SECRET not in repr(outcome)


def test_the_secret_is_nowhere_a_failed_run_is_shown_or_logged(
    clean_state, redis_client, target
) -> None:
    rules = parse_rules(f"""
remediations:
  - name: restart-api
    matchers: ['alertname="HighErrorRate"']
    action: http
    with:
      url: "{target.base}/services/{{labels.service}}/restart"
      headers: {{X-Deploy-Token: "{{env.DEPLOYER_TOKEN}}{{labels.suffix}}"}}
    on_failure: notify
""")
    harness = Harness(rules, redis_client)
    with structlog.testing.capture_logs() as logs:
        change = harness.ingest(factories.payload(factories.alert(suffix=" ")))
        harness.run_to_the_end(change)

    (run,) = runs()
    assert run.status == "failed"
    assert target.arrivals == []
    with session_scope() as session:
        details = [e.detail for e in session.scalars(select(TimelineEntry))]
    with TestClient(create_app(get_settings())) as api:
        shown = api.get(
            f"/api/incidents/{change.incident_id}",
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        )
    assert shown.status_code == 200
    assert shown.json()["remediations"][0]["last_error"] == run.last_error
    everything = repr((run.last_error, run.output, details, notifications(change.incident_id),
                       shown.text, logs))
    assert SECRET not in everything
    assert "header 'X-Deploy-Token' would begin or end with a space or tab" in run.last_error
