"""A fake PagerDuty Events API v2 over HTTPS, for the real python-pagerduty client.

The client insists on an https:// base URL, so the fake serves TLS with a
certificate from a throwaway CA (``trustme``); ``ca_path`` is that CA as a PEM
file, for ``verify=`` or ``SSL_CERT_FILE``. Events are validated the way
PagerDuty documents them, so a malformed event fails here as it would there.
"""

from __future__ import annotations

import shutil
import ssl
import tempfile
import uuid
from pathlib import Path
from typing import Any, Self

import trustme

from tests.fakes.http_server import FakeHTTPService, Reply, ScriptedFailure

DEFAULT_ROUTING_KEY = "R0UTINGKEYFAKE00000000000000A1B2"
ACTIONS = ("trigger", "acknowledge", "resolve")
SEVERITIES = ("critical", "error", "warning", "info")
MAX_EVENT_BYTES = 512 * 1024


class FakePagerDuty(FakeHTTPService):
    def __init__(self, *, routing_key: str = DEFAULT_ROUTING_KEY) -> None:
        self.ca = trustme.CA()
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)
        super().__init__(tls=server_context)
        self.routing_key = routing_key
        self._events: list[dict[str, Any]] = []
        self._directory: Path | None = None

    def start(self) -> Self:
        self._directory = Path(tempfile.mkdtemp(prefix="fake-pagerduty-"))
        self.ca.cert_pem.write_to_path(str(self.ca_path))
        return super().start()

    def stop(self) -> None:
        super().stop()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    @property
    def ca_path(self) -> str:
        assert self._directory is not None, "start() the fake first"
        return str(self._directory / "fake-pagerduty-ca.pem")

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every event accepted (answered 202), in order."""
        with self._lock:
            return list(self._events)

    @property
    def event_sizes(self) -> list[int]:
        """The byte size of each request body, accepted or not."""
        return [int(request.headers.get("content-length", 0)) for request in self.requests]

    def parse_body(self, raw: bytes, content_type: str) -> dict[str, Any]:
        return super().parse_body(raw, "json")  # whatever the client says it sent

    def scripted_reply(self, failure: ScriptedFailure) -> Reply:
        status = failure.status or 500
        headers = {}
        if status == 429 and failure.retry_after is not None:
            headers["Retry-After"] = f"{failure.retry_after:g}"
        if status == 429:
            return Reply(
                429,
                {
                    "status": "throttle event",
                    "message": "Requests for this service are arriving too quickly.",
                },
                headers,
            )
        if status >= 500:
            return Reply(status, {"status": "error", "message": "Internal server error"}, headers)
        return _invalid(failure.error or "Event object is invalid", status=status)

    def handle(self, method: str, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        if method != "/v2/enqueue":
            return Reply(404, {"status": "error", "message": "Not found"})
        if "_unparsable" in body:
            return _invalid("Malformed JSON")
        if int(headers.get("content-length", 0)) > MAX_EVENT_BYTES:
            return _invalid("Event object is too large")
        problems = _problems(body, self.routing_key)
        if problems:
            return _invalid(*problems)
        dedup_key = body.get("dedup_key") or uuid.uuid4().hex
        self._events.append(body)
        return Reply(
            202, {"status": "success", "message": "Event processed", "dedup_key": dedup_key}
        )


def _problems(event: dict[str, Any], routing_key: str) -> list[str]:
    problems = []
    if event.get("routing_key") != routing_key:
        problems.append("Invalid routing key")
    action = event.get("event_action")
    if action not in ACTIONS:
        problems.append("'event_action' is invalid (must be one of trigger, acknowledge, resolve)")
    dedup_key = event.get("dedup_key")
    if action in ("acknowledge", "resolve") and not dedup_key:
        problems.append("'dedup_key' is required for acknowledge and resolve")
    if dedup_key is not None and (not isinstance(dedup_key, str) or len(dedup_key) > 255):
        problems.append("'dedup_key' must be a string of at most 255 characters")
    if action == "trigger":
        payload = event.get("payload")
        if not isinstance(payload, dict):
            return [*problems, "'payload' is missing"]
        for field in ("summary", "source"):
            if not isinstance(payload.get(field), str) or not payload[field]:
                problems.append(f"'payload.{field}' is missing or blank")
        if len(payload.get("summary") or "") > 1024:
            problems.append("'payload.summary' is longer than 1024 characters")
        if payload.get("severity") not in SEVERITIES:
            problems.append(
                "'payload.severity' is invalid (must be one of critical, error, warning, info)"
            )
    return problems


def _invalid(*errors: str, status: int = 400) -> Reply:
    return Reply(
        status,
        {"status": "invalid event", "message": "Event object is invalid", "errors": list(errors)},
    )
