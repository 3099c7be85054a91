"""PagerDuty Events API v2 over ``pagerduty.EventsApiV2Client`` (python-pagerduty
7, built on httpx2).

One alert per incident, ``dedup_key`` = ``incident.key``. The client's own retry
loop sleeps (1.5 s, doubling; without limit on 429), which would stall a worker
and hide the failure from Celery, so it is cut to a single attempt: every
answer comes back at once as a typed ``DeliveryError``.
"""

from __future__ import annotations

import json
import logging
import ssl
from typing import Any

import pagerduty
from httpx2 import Response, TransportError

from incident.config import ConfigurationError
from incident.integrations.base import (
    PAGER_SEVERITIES,
    DeliveryError,
    IncidentView,
    PermanentDeliveryError,
    RateLimited,
    TransientDeliveryError,
    parse_retry_after,
)

SUMMARY_LIMIT = 1024
SOURCE_LIMIT = 255
LINK_LIMIT = 2048
# PagerDuty refuses events over 512 KB; leave room for the routing key and slack.
EVENT_BUDGET = 500_000
CLIENT_NAME = "incident"
# When cutting, keep this many labels (and annotations), in name order.
MAX_DETAIL_ITEMS = 200

SDK_LOG = logging.getLogger("incident.integrations.pagerduty.sdk")
SDK_LOG.setLevel(logging.CRITICAL)


class PagerDutyNotifier:
    """``Pager`` for one PagerDuty service integration (its routing key).

    ``ca_bundle`` is a PEM file of CAs to trust instead of the system's (a test
    CA, a TLS-inspecting proxy). Without it httpx2 also honours ``SSL_CERT_FILE``
    and ``SSL_CERT_DIR``.
    """

    def __init__(
        self,
        routing_key: str,
        *,
        events_url: str = "https://events.pagerduty.com",
        ca_bundle: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        # httpx2 deprecates verify=<path>; an SSLContext is its supported form.
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=ca_bundle) if ca_bundle else True
        )
        try:
            client = pagerduty.EventsApiV2Client(routing_key, base_url=events_url, verify=verify)
        except pagerduty.UrlError:
            raise ConfigurationError(
                f"INCIDENT_PAGERDUTY_EVENTS_URL must be an https:// URL, not {events_url!r}"
            ) from None
        client.timeout = timeout
        _single_attempt(client)
        self._client = client

    def __repr__(self) -> str:
        return f"PagerDutyNotifier(events_url={self._client.url!r})"

    def close(self) -> None:
        self._client.close()

    def trigger(self, incident: IncidentView, *, severity: str) -> str:
        if severity not in PAGER_SEVERITIES:
            raise ValueError(
                f"PagerDuty severity must be one of {PAGER_SEVERITIES}, not {severity!r}"
            )
        self._send("trigger", incident.key, **trigger_event(incident, severity=severity))
        return incident.key

    def acknowledge(self, dedup_key: str) -> None:
        self._send("acknowledge", dedup_key)

    def resolve(self, dedup_key: str) -> None:
        self._send("resolve", dedup_key)

    def _send(self, action: str, dedup_key: str, **event: Any) -> None:
        try:
            self._client.send_event(action, dedup_key=dedup_key, **event)
        except pagerduty.HttpError as exc:
            raise pagerduty_delivery_error(action, exc.response) from None
        except pagerduty.Error as exc:
            # With one network attempt allowed, the client wraps the transport
            # error (refused, timed out, TLS) in a plain Error.
            cause = exc.__cause__
            if isinstance(cause, TransportError):
                raise TransientDeliveryError(
                    f"PagerDuty {action}: {type(cause).__name__}: {cause}",
                    code=type(cause).__name__,
                    maybe_delivered=True,
                ) from cause
            raise PermanentDeliveryError(f"PagerDuty {action}: {exc}") from None


def _single_attempt(client: pagerduty.EventsApiV2Client) -> None:
    """No retries and no sleeps inside ``ApiClient.request``.

    A ``retry`` entry of 0 means "default": a returned response for 5xx but an
    unlimited sleep-and-retry loop for 429. A positive entry is checked against
    ``max_http_attempts`` before the first retry, so -1 there returns the 429 at
    once. ``max_network_attempts = 0`` raises on the first transport error.
    """
    client.retry = {500: 0, 502: 0, 503: 0, 504: 0, 429: 1}
    client.max_http_attempts = -1
    client.max_network_attempts = 0
    client.sleep_timer = 0
    # That trick makes the client log "exceeded maximum number of attempts (-1)"
    # at ERROR for every 429; the DeliveryError we raise is the real report.
    client.log = SDK_LOG


def pagerduty_delivery_error(action: str, response: Response) -> DeliveryError:
    status = response.status_code
    message = _error_message(response)
    if status == 429:
        return RateLimited(
            f"PagerDuty {action}: rate limited",
            retry_after=parse_retry_after(response.headers.get("retry-after")),
            code="429",
        )
    if status >= 500 or 200 <= status < 300:
        # A 2xx only lands here when its body was malformed: PagerDuty's glitch.
        return TransientDeliveryError(
            f"PagerDuty {action}: HTTP {status}: {message}", code=str(status)
        )
    return PermanentDeliveryError(f"PagerDuty {action}: HTTP {status}: {message}", code=str(status))


def _error_message(response: Response) -> str:
    """PagerDuty's own words ({"message": …, "errors": […]}), short."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if not isinstance(body, dict):
        return str(body)[:200]
    parts = [str(body.get("message") or body.get("status") or "")]
    errors = body.get("errors")
    if isinstance(errors, list) and errors:
        parts.append("; ".join(str(error) for error in errors[:5]))
    return ": ".join(part for part in parts if part)[:500]


def trigger_event(incident: IncidentView, *, severity: str) -> dict[str, Any]:
    """The trigger event's fields besides ``event_action``, ``dedup_key`` and the
    routing key, always under PagerDuty's size limit."""
    labels = incident.labels
    summary = f"[{incident.severity}] {incident.title}"
    if incident.summary:
        summary += f" — {incident.summary}"
    payload: dict[str, Any] = {
        "summary": _cut(summary, SUMMARY_LIMIT),
        "source": _cut(
            labels.get("instance") or labels.get("service") or CLIENT_NAME, SOURCE_LIMIT
        ),
        "severity": severity,
        "timestamp": incident.created_at.isoformat(),
    }
    for field, label in (("component", "service"), ("group", "job"), ("class", "alertname")):
        if labels.get(label):
            payload[field] = _cut(labels[label], SOURCE_LIMIT)
    links = [{"href": incident.incident_url, "text": f"Incident #{incident.id}"}]
    for href, text in (
        (incident.annotations.get("runbook_url"), "Runbook"),
        (next((a.generator_url for a in incident.alerts if a.generator_url), None), "Source"),
        (incident.silence_url(), "Silence in Alertmanager"),
    ):
        if href and len(href) <= LINK_LIMIT:
            links.append({"href": href, "text": text})
    event = {
        "payload": payload,
        "links": links,
        "client": CLIENT_NAME,
        "client_url": incident.incident_url,
    }
    payload["custom_details"] = _fitting_details(incident, event)
    return event


def _fitting_details(incident: IncidentView, event: dict[str, Any]) -> dict[str, Any]:
    """The richest ``custom_details`` that keeps the event within budget: alert
    details go first, then long values are cut shorter and shorter."""
    room = EVENT_BUDGET - _size(event) - 100
    base = {
        "incident_id": incident.id,
        "incident_url": incident.incident_url,
        "status": incident.status,
        "flapping": incident.flapping,
        "alerts_total": len(incident.alerts),
        "alerts_firing": len(incident.firing_alerts),
    }
    full_alerts = [
        {"fingerprint": a.fingerprint, "status": a.status, "labels": a.labels}
        for a in incident.alerts
    ]
    bare_alerts = [{"fingerprint": a.fingerprint, "status": a.status} for a in incident.alerts]
    attempts: list[dict[str, Any]] = [
        {
            **base,
            "labels": incident.labels,
            "annotations": incident.annotations,
            "alerts": full_alerts,
        },
        {
            **base,
            "labels": incident.labels,
            "annotations": incident.annotations,
            "alerts": bare_alerts,
        },
    ]
    for limit in (4096, 1024, 256, 64):
        attempts.append(
            {
                **base,
                "labels": _cut_values(incident.labels, limit),
                "annotations": _cut_values(incident.annotations, limit),
                "details_truncated": True,
                "labels_omitted": max(0, len(incident.labels) - MAX_DETAIL_ITEMS),
            }
        )
    for details in attempts:
        if _size(details) <= room:
            return details
    return {**base, "details_truncated": True, "labels_omitted": len(incident.labels)}


def _cut_values(values: dict[str, str], limit: int) -> dict[str, str]:
    items = sorted(values.items())[:MAX_DETAIL_ITEMS]
    return {_cut(name, 128): _cut(value, limit) for name, value in items}


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _size(value: Any) -> int:
    # As httpx2 will send it: compact separators, UTF-8.
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
