"""`incident pagerduty subscribe`: have PagerDuty send a service's incident changes back."""

from __future__ import annotations

import ipaddress
import sys
from urllib.parse import urlsplit

from incident.config import ConfigurationError, Settings

WEBHOOK_PATH = "/webhooks/pagerduty"


def subscribe(settings: Settings, service_id: str) -> int:
    from incident.integrations.pagerduty_subscriptions import SubscriptionError
    from incident.integrations.pagerduty_subscriptions import subscribe as create
    from incident.notifications.pagerduty_events import SUBSCRIBED

    if settings.pagerduty_api_key is None:
        raise ConfigurationError(
            "INCIDENT_PAGERDUTY_API_KEY is not set: a PagerDuty REST API key that may "
            "create webhook subscriptions"
        )
    url = settings.public_url.rstrip("/") + WEBHOOK_PATH
    if _unreachable_from_outside(url):
        raise ConfigurationError(
            f"INCIDENT_PUBLIC_URL is {settings.public_url!r}, which PagerDuty cannot reach: "
            "set it to the address PagerDuty should deliver webhooks to"
        )
    try:
        made = create(
            api_key=settings.pagerduty_api_key.get_secret_value(),
            api_url=settings.pagerduty_api_url,
            service_id=service_id,
            url=url,
            events=[str(kind) for kind in SUBSCRIBED],
        )
    except SubscriptionError as exc:
        print(f"incident: {exc}", file=sys.stderr)
        return 1
    print(f"PagerDuty webhook subscription {made.id} created for service {made.service}:")
    print(f"  deliveries go to {made.url}")
    print("Set this on the api (PagerDuty shows the secret only once):")
    print(f"  INCIDENT_PAGERDUTY_WEBHOOK_SECRET={made.secret}")
    return 0


def _unreachable_from_outside(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
