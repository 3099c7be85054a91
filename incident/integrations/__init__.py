"""The doors to Slack and PagerDuty: the only package that imports a vendor SDK.

Callers depend on the ``SlackPoster`` and ``Pager`` Protocols and get their
implementations here, from settings:

- ``build_slack(settings)``: a ``SlackNotifier``, or None when
  ``INCIDENT_SLACK_BOT_TOKEN`` or ``INCIDENT_SLACK_CHANNEL`` is unset;
- ``build_pager(settings)``: a ``PagerDutyNotifier``, or None without
  ``INCIDENT_PAGERDUTY_ROUTING_KEY``;
- ``build_mailer(settings)``: an ``EmailNotifier``, or None without
  ``INCIDENT_SMTP_URL``, ``INCIDENT_EMAIL_FROM`` and ``INCIDENT_EMAIL_TO``;
- ``console()``: the ``ConsoleNotifier``, both Protocols at once.

When neither Slack nor PagerDuty is configured, callers fall back to
``console()`` for both, so ``incident dev`` shows what would be sent. A service
that is configured is never shadowed by the console.

To trust a private CA (tests, TLS-inspecting proxies) without code, set
``SSL_CERT_FILE`` to a PEM bundle: httpx2 (PagerDuty) and urllib (Slack) both
read it, and so does the SMTP client (``ssl.create_default_context``). It replaces the system store rather than adding to it.
"""

from __future__ import annotations

from incident.config import Settings
from incident.integrations.base import (
    AlertView,
    DeliveryError,
    IncidentView,
    Pager,
    PermanentDeliveryError,
    RateLimited,
    SlackPoster,
    TransientDeliveryError,
)
from incident.integrations.console import ConsoleNotifier

__all__ = [
    "AlertView",
    "ConsoleNotifier",
    "DeliveryError",
    "IncidentView",
    "Pager",
    "PermanentDeliveryError",
    "RateLimited",
    "SlackPoster",
    "TransientDeliveryError",
    "build_mailer",
    "build_pager",
    "build_pager_for_key",
    "build_slack",
    "console",
]


def build_slack(settings: Settings) -> SlackPoster | None:
    token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else ""
    if not token or not settings.slack_channel:
        return None
    # Imported here so that a process without Slack never loads slack_sdk.
    from incident.integrations.slack import SlackNotifier

    return SlackNotifier(
        token, api_url=settings.slack_api_url,
        interactive=settings.slack_signing_secret is not None,
    )


def build_pager(settings: Settings) -> Pager | None:
    key = settings.pagerduty_routing_key
    routing_key = key.get_secret_value() if key else ""
    if not routing_key:
        return None
    return build_pager_for_key(settings, routing_key)


def build_pager_for_key(settings: Settings, routing_key: str) -> Pager:
    """A ``PagerDutyNotifier`` for one service's key (a route's ``routing_key_env``)."""
    from incident.integrations.pagerduty import PagerDutyNotifier

    return PagerDutyNotifier(routing_key, events_url=settings.pagerduty_events_url)


def build_mailer(settings: Settings):
    if not settings.email_configured or settings.smtp_url is None:
        return None
    from incident.integrations.email import EmailNotifier

    return EmailNotifier(settings.smtp_url.get_secret_value(), settings.email_from or "")


def console() -> ConsoleNotifier:
    return ConsoleNotifier()
