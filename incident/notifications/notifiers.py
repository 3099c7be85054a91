"""The set of notifiers a worker delivers through, built once from settings."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from incident.config import Settings
from incident.integrations import (
    build_mailer, build_pager, build_pager_for_key, build_slack, console,
)
from incident.integrations.base import Pager, PermanentDeliveryError, SlackPoster
from incident.integrations.email import EmailNotifier
from incident.notifications.digest import SlackDigests
from incident.notifications.ratelimit import TokenBucket
from incident.notifications.storm import SlackStorms


class NotConfigured(RuntimeError):
    pass


@dataclass
class Notifiers:
    slack: SlackPoster | None
    pager: Pager | None
    console: SlackPoster
    default_slack_channel: str
    public_url: str
    slack_bucket: TokenBucket
    digests: SlackDigests
    mailer: EmailNotifier | None = None
    # Per recipient list: SEV3/SEV4 mail beyond it waits for the next digest.
    email_bucket: TokenBucket | None = None
    # A routed service's notifier, from its routing key.
    pager_for_key: Callable[[str], Pager] | None = None
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    # Storm mode per Slack channel; None: never (every row waits for its own token).
    storms: SlackStorms | None = None
    _routed: dict[str, Pager] = field(default_factory=dict)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, bucket: TokenBucket, digests: SlackDigests,
        email_bucket: TokenBucket | None = None, storms: SlackStorms | None = None,
    ) -> Notifiers:
        return cls(
            mailer=build_mailer(settings),
            email_bucket=email_bucket,
            slack=build_slack(settings),
            pager=build_pager(settings),
            console=console(),
            default_slack_channel=settings.slack_channel or "",
            public_url=settings.public_url,
            slack_bucket=bucket,
            digests=digests,
            storms=storms,
            pager_for_key=lambda key: build_pager_for_key(settings, key),
        )

    def require_slack(self) -> SlackPoster:
        if self.slack is None:
            raise NotConfigured("Slack is not configured (INCIDENT_SLACK_BOT_TOKEN, INCIDENT_SLACK_CHANNEL)")
        return self.slack

    def require_storms(self) -> SlackStorms:
        if self.storms is None:
            raise NotConfigured("Slack storm mode needs Redis")
        return self.storms

    def require_pager(self) -> Pager:
        if self.pager is None:
            raise NotConfigured("PagerDuty is not configured (INCIDENT_PAGERDUTY_ROUTING_KEY)")
        return self.pager

    def pager_for(self, routing_key_env: str) -> Pager:
        """The notifier of the service whose key is in ``routing_key_env``; '' the default."""
        if not routing_key_env:
            return self.require_pager()
        if routing_key_env not in self._routed:
            key = self.environ.get(routing_key_env)
            if not key or self.pager_for_key is None:
                raise PermanentDeliveryError(
                    f"PagerDuty routing key variable {routing_key_env} is not set in the worker"
                )
            self._routed[routing_key_env] = self.pager_for_key(key)
        return self._routed[routing_key_env]

    def require_mailer(self) -> EmailNotifier:
        if self.mailer is None:
            raise NotConfigured(
                "email is not configured (INCIDENT_SMTP_URL, INCIDENT_EMAIL_FROM)"
            )
        return self.mailer
