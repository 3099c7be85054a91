"""A fake PagerDuty Events API v2, and the few REST API v2 routes we use (a
service, webhook subscriptions), over HTTPS, for the real python-pagerduty clients.

The client insists on an https:// base URL, so the fake serves TLS with a
certificate from a throwaway CA (``trustme``); ``ca_path`` is that CA as a PEM
file, for ``verify=`` or ``SSL_CERT_FILE``. Events are validated the way
PagerDuty documents them, so a malformed event fails here as it would there.
"""

from __future__ import annotations

import hashlib
import hmac
import shutil
import ssl
import tempfile
import uuid
from pathlib import Path
from typing import Any, Self

import trustme

from tests.fakes.http_server import FakeHTTPService, Reply, ScriptedFailure

DEFAULT_ROUTING_KEY = "R0UTINGKEYFAKE00000000000000A1B2"
DEFAULT_API_KEY = "u+FAKEAPIKEY0000000a"
WEBHOOK_EVENT_TYPES = (
    "incident.acknowledged", "incident.annotated", "incident.delegated", "incident.escalated",
    "incident.priority_updated", "incident.reassigned", "incident.reopened", "incident.resolved",
    "incident.responder.added", "incident.responder.replied",
    "incident.status_update_published", "incident.triggered", "incident.unacknowledged",
    "service.created", "service.deleted", "service.updated",
)
ACTIONS = ("trigger", "acknowledge", "resolve")
SEVERITIES = ("critical", "error", "warning", "info")
MAX_EVENT_BYTES = 512 * 1024


class FakePagerDuty(FakeHTTPService):
    def __init__(
        self, *, routing_key: str = DEFAULT_ROUTING_KEY, api_key: str = DEFAULT_API_KEY,
        services: dict[str, str] | None = None, other_routing_keys: tuple[str, ...] = (),
    ) -> None:
        self.ca = trustme.CA()
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)
        super().__init__(tls=server_context)
        self.routing_key = routing_key
        # Further integration keys it accepts: several services, one per team.
        self.routing_keys = frozenset({routing_key, *other_routing_keys})
        self.api_key = api_key
        self.services = services if services is not None else {"PSVC001": "Checkout API"}
        self.subscriptions: list[dict[str, Any]] = []
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
        if method.startswith("/services/") or method == "/webhook_subscriptions":
            return self._rest(method, body, headers)
        if method != "/v2/enqueue":
            return Reply(404, {"status": "error", "message": "Not found"})
        if "_unparsable" in body:
            return _invalid("Malformed JSON")
        if int(headers.get("content-length", 0)) > MAX_EVENT_BYTES:
            return _invalid("Event object is too large")
        problems = _problems(body, self.routing_keys)
        if problems:
            return _invalid(*problems)
        dedup_key = body.get("dedup_key") or uuid.uuid4().hex
        self._events.append(body)
        return Reply(
            202, {"status": "success", "message": "Event processed", "dedup_key": dedup_key}
        )


    # --- REST API v2 ------------------------------------------------------

    def _rest(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        if headers.get("authorization") != f"Token token={self.api_key}":
            return _rest_error(401, "Authentication Required", code=2006)
        if "application/vnd.pagerduty+json;version=2" not in headers.get("accept", ""):
            return _rest_error(406, "Not Acceptable: the Accept header must ask for version 2")
        if path.startswith("/services/"):
            service_id = path.removeprefix("/services/")
            if service_id not in self.services:
                return _rest_error(404, "Not Found", code=2100)
            return Reply(200, {"service": {"id": service_id, "type": "service",
                                           "name": self.services[service_id],
                                           "summary": self.services[service_id]}})
        problems = _subscription_problems(body, self.services)
        if problems:
            return _rest_error(400, "Invalid Input Provided", code=2001, errors=problems)
        subscription = {
            **body["webhook_subscription"],
            "id": f"PWHS{len(self.subscriptions) + 1:03d}",
            "active": True,
        }
        subscription["delivery_method"] = {
            **subscription["delivery_method"],
            "id": f"PDM{len(self.subscriptions) + 1:03d}",
            "secret": uuid.uuid4().hex + uuid.uuid4().hex,
            "temporarily_disabled": False,
        }
        self.subscriptions.append(subscription)
        return Reply(201, {"webhook_subscription": subscription})


def _subscription_problems(body: dict[str, Any], services: dict[str, str]) -> list[str]:
    subscription = body.get("webhook_subscription")
    if not isinstance(subscription, dict):
        return ["webhook_subscription is required"]
    problems = []
    if subscription.get("type") != "webhook_subscription":
        problems.append("type must be webhook_subscription")
    delivery = subscription.get("delivery_method") or {}
    if delivery.get("type") != "http_delivery_method":
        problems.append("delivery_method.type must be http_delivery_method")
    if not str(delivery.get("url", "")).startswith(("http://", "https://")):
        problems.append("delivery_method.url must be an http(s) URL")
    events = subscription.get("events")
    if not isinstance(events, list) or not events:
        problems.append("events must be a non-empty list")
    else:
        problems += [f"unknown event type {e!r}" for e in events if e not in WEBHOOK_EVENT_TYPES]
    filter_ = subscription.get("filter") or {}
    if filter_.get("type") not in ("service_reference", "team_reference", "account_reference"):
        problems.append("filter.type is invalid")
    elif filter_.get("type") == "service_reference" and filter_.get("id") not in services:
        problems.append("filter.id is not a service")
    return problems


def _rest_error(status: int, message: str, *, code: int = 0, errors: list[str] | None = None) -> Reply:
    return Reply(status, {"error": {"message": message, "code": code, "errors": errors or []}})


def _problems(event: dict[str, Any], routing_keys: frozenset[str]) -> list[str]:
    problems = []
    if event.get("routing_key") not in routing_keys:
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


# --- V3 webhooks, as PagerDuty sends them back -------------------------------

WEBHOOK_SECRET = "pd-webhook-secret-0b5d1f2e8c"


def signature(body: bytes, secret: str = WEBHOOK_SECRET) -> str:
    """``X-PagerDuty-Signature``'s value: ``v1=`` + hex HMAC-SHA256 of the raw body."""
    return "v1=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signed_headers(body: bytes, *secrets: str) -> dict[str, str]:
    """Headers of a delivery; several secrets while one is being rotated."""
    return {
        "Content-Type": "application/json",
        "User-Agent": "PagerDuty-Webhook/V3.0",
        "X-Webhook-Id": uuid.uuid4().hex,
        "X-PagerDuty-Signature": ",".join(signature(body, s) for s in secrets or (WEBHOOK_SECRET,)),
    }


AGENT = {"id": "PAGENT1", "summary": "Alice Oncall", "type": "user_reference",
         "self": "https://api.pagerduty.com/users/PAGENT1",
         "html_url": "https://acme.pagerduty.com/users/PAGENT1"}


def incident_data(incident_key: str, *, pagerduty_id: str = "PINC001", status: str = "triggered",
                  assignees: tuple[str, ...] = ("Alice Oncall",),
                  policy: str = "Checkout on-call") -> dict[str, Any]:
    """``event.data`` of an incident event: PagerDuty's incident, with our key."""
    return {
        "id": pagerduty_id, "type": "incident", "number": 42, "status": status,
        "self": f"https://api.pagerduty.com/incidents/{pagerduty_id}",
        "html_url": f"https://acme.pagerduty.com/incidents/{pagerduty_id}",
        "incident_key": incident_key, "title": "HighErrorRate api", "urgency": "high",
        "created_at": "2026-11-22T03:00:05Z",
        "service": {"id": "PSVC001", "summary": "Checkout API", "type": "service_reference"},
        "assignees": [
            {"id": f"PUSER{n}", "summary": name, "type": "user_reference"}
            for n, name in enumerate(assignees)
        ],
        "escalation_policy": {"id": "PPOL001", "summary": policy,
                              "type": "escalation_policy_reference"},
        "teams": [], "priority": None, "resolve_reason": None,
    }


def note_data(content: str, *, pagerduty_id: str = "PINC001") -> dict[str, Any]:
    """``event.data`` of ``incident.annotated``: the note, naming only PagerDuty's incident."""
    return {
        "id": "PNOTE01", "type": "incident_note", "content": content, "trimmed": False,
        "incident": {"id": pagerduty_id, "type": "incident_reference",
                     "summary": "HighErrorRate api",
                     "self": f"https://api.pagerduty.com/incidents/{pagerduty_id}"},
    }


def webhook(event_type: str, data: dict[str, Any] | None, *, event_id: str | None = None,
            agent: dict[str, Any] | None = AGENT) -> dict[str, Any]:
    """A V3 webhook body: one event."""
    return {"event": {
        "id": event_id or uuid.uuid4().hex,
        "event_type": event_type,
        "resource_type": "incident" if event_type.startswith("incident.") else "pagey",
        "occurred_at": "2026-11-22T03:05:00.000Z",
        "agent": agent,
        "client": {"name": "PagerDuty"},
        "data": data,
    }}
