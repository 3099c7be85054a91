"""PagerDuty's REST API v2, for one job: a V3 webhook subscription sending a
service's incident events back to us (``incident pagerduty subscribe``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pagerduty
from httpx2 import TransportError

from incident.integrations.pagerduty import SDK_LOG


class SubscriptionError(RuntimeError):
    """PagerDuty refused or could not be reached; the message says which and why."""


@dataclass(frozen=True)
class Subscription:
    id: str
    service: str  # the service's name
    url: str
    secret: str  # signs every delivery: INCIDENT_PAGERDUTY_WEBHOOK_SECRET


def subscribe(
    *, api_key: str, api_url: str, service_id: str, url: str, events: Sequence[str],
    description: str = "incident: PagerDuty changes back to the incident worker",
) -> Subscription:
    """Create the subscription (POST /webhook_subscriptions) filtered to ``service_id``."""
    client = _client(api_key, api_url)
    try:
        service = _call(client.rget, f"/services/{service_id}", what=f"service {service_id}")
        created = _call(
            client.rpost, "/webhook_subscriptions", what="the webhook subscription",
            json={
                "type": "webhook_subscription",
                "description": description,
                "delivery_method": {"type": "http_delivery_method", "url": url},
                "events": list(events),
                "filter": {"type": "service_reference", "id": service_id},
            },
        )
    finally:
        client.close()
    delivery = created.get("delivery_method") or {}
    if not delivery.get("secret"):
        raise SubscriptionError("PagerDuty created the subscription but returned no secret")
    return Subscription(
        id=str(created.get("id", "?")),
        service=str(service.get("name") or service.get("summary") or service_id),
        url=str(delivery.get("url") or url),
        secret=delivery["secret"],
    )


def _client(api_key: str, api_url: str) -> pagerduty.RestApiV2Client:
    try:
        client = pagerduty.RestApiV2Client(api_key, base_url=api_url.rstrip("/"))
    except pagerduty.UrlError:
        raise SubscriptionError(
            f"INCIDENT_PAGERDUTY_API_URL must be an https:// URL, not {api_url!r}"
        ) from None
    # One command, run by a person: fail at once rather than sleep through retries.
    client.max_network_attempts = 0
    client.timeout = 15.0
    client.log = SDK_LOG
    return client


def _call(method, path: str, *, what: str, **kwargs) -> dict:
    try:
        return method(path, **kwargs)
    except pagerduty.HttpError as exc:
        status = exc.response.status_code
        if status == 401:
            raise SubscriptionError(
                "PagerDuty refused the API key (401): check INCIDENT_PAGERDUTY_API_KEY"
            ) from None
        if status == 403:
            raise SubscriptionError(
                f"PagerDuty refused access to {what} (403): the API key may be read-only"
            ) from None
        if status == 404:
            raise SubscriptionError(f"PagerDuty knows no {what} (404)") from None
        raise SubscriptionError(
            f"PagerDuty answered {status} for {what}: {_message(exc.response)}"
        ) from None
    except pagerduty.Error as exc:
        cause = exc.__cause__
        if isinstance(cause, TransportError):
            raise SubscriptionError(f"could not reach PagerDuty: {cause}") from None
        raise SubscriptionError(f"PagerDuty: {exc}") from None


def _message(response) -> str:
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        return response.text[:200]
    details = "; ".join(str(e) for e in error.get("errors") or [])
    return ": ".join(p for p in (str(error.get("message") or ""), details) if p)[:500]
