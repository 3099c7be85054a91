"""Typed settings, read from the environment (prefix ``INCIDENT_``) once per process."""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import unquote, urlsplit
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class ConfigurationError(RuntimeError):
    """A setting is missing or inconsistent; the message names it."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INCIDENT_", extra="ignore")

    database_url: str | None = None
    broker_url: str | None = None
    redis_url: str | None = None
    rules_file: Path | None = None

    webhook_token: SecretStr | None = None
    webhook_auth: Literal["bearer", "none"] = "bearer"
    api_token: SecretStr | None = None
    api_auth: Literal["bearer", "none"] = "bearer"
    metrics_token: SecretStr | None = None

    slack_bot_token: SecretStr | None = None
    slack_channel: str | None = None
    slack_api_url: str = "https://slack.com/api/"
    pagerduty_routing_key: SecretStr | None = None
    pagerduty_events_url: str = "https://events.pagerduty.com"
    # Turns on the Slack buttons and POST /slack/interactions.
    slack_signing_secret: SecretStr | None = None
    # Turns on POST /webhooks/pagerduty (V3 webhook subscription secret).
    pagerduty_webhook_secret: SecretStr | None = None
    # REST API key and base URL for `incident pagerduty subscribe`.
    pagerduty_api_key: SecretStr | None = None
    pagerduty_api_url: str = "https://api.pagerduty.com"
    # Email: smtp://user:password@host:587 (STARTTLS when offered) or smtps://… (implicit TLS).
    smtp_url: SecretStr | None = None
    email_from: str | None = None
    # Default recipients, comma-separated.
    email_to: str | None = None
    # How long SEV3/SEV4 mail waits to be gathered into one digest in a storm.
    email_digest_seconds: float = Field(default=180.0, gt=0)
    # Alertmanager base URL(s), comma-separated for an HA cluster, tried in order.
    alertmanager_url: str | None = None
    # The web console's sign-in (OpenID Connect) and its session cookies.
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: SecretStr | None = None
    oidc_allowed_domains: str | None = None
    session_secret: SecretStr | None = None

    log_dir: Path | None = None
    log_format: Literal["json", "console"] = "json"
    log_level: str = "INFO"
    backup_dir: Path = Path(".incident/backups")
    public_url: str = "http://127.0.0.1:8080"

    max_body_bytes: int = Field(default=5 * MiB, gt=0)
    # How long Redis waits before handing an unacknowledged message to another
    # worker: how soon the work of a worker that died (OOM-killed, SIGKILL) is
    # redone. Every late-acknowledged task's hard time limit stays below it.
    broker_visibility_timeout: float = Field(default=300.0, ge=120)
    # How often beat looks for due escalation timers and undelivered notifications.
    escalation_poll_seconds: float = Field(default=15.0, gt=0)
    # Set by `incident dev`: a single-machine trial where missing tokens are allowed.
    dev_mode: bool = False

    @field_validator("database_url")
    @classmethod
    def _psycopg_driver(cls, url: str | None) -> str | None:
        # Accept the plain libpq spelling operators copy from elsewhere.
        if url and url.startswith(("postgresql://", "postgres://")):
            return "postgresql+psycopg://" + url.split("://", 1)[1]
        return url

    def require_database_url(self) -> str:
        if not self.database_url:
            raise ConfigurationError("INCIDENT_DATABASE_URL is not set")
        return self.database_url

    def require_broker_url(self) -> str:
        if not self.broker_url:
            raise ConfigurationError("INCIDENT_BROKER_URL is not set")
        return self.broker_url

    @property
    def shared_redis_url(self) -> str:
        """Redis for shared state: INCIDENT_REDIS_URL, else the broker when that is Redis."""
        if self.redis_url:
            return self.redis_url
        broker = self.require_broker_url()
        if broker.startswith(("redis://", "rediss://", "unix://")):
            return broker
        if broker.startswith("redis+socket://"):
            return "unix://" + broker.removeprefix("redis+socket://")
        raise ConfigurationError(
            "INCIDENT_REDIS_URL is not set and INCIDENT_BROKER_URL is not Redis; "
            "shared state (locks, breakers, rate limits) needs Redis"
        )

    @property
    def alertmanager_urls(self) -> list[str]:
        """The Alertmanager URLs for silences, in the order they are tried."""
        return [url.strip().rstrip("/") for url in (self.alertmanager_url or "").split(",")
                if url.strip()]

    @property
    def email_configured(self) -> bool:
        """SMTP and a sender; recipients come from the incident's route, else INCIDENT_EMAIL_TO."""
        return bool(self.smtp_url and self.smtp_url.get_secret_value() and self.email_from)

    @property
    def email_recipients(self) -> list[str]:
        """INCIDENT_EMAIL_TO as a list: the default recipients."""
        return [a.strip() for a in (self.email_to or "").split(",") if a.strip()]

    @property
    def oidc_configured(self) -> bool:
        return bool(self.oidc_issuer and self.oidc_client_id)

    @property
    def console_enabled(self) -> bool:
        """The console needs a sign-in: OpenID Connect, or the local user of `incident dev`."""
        return self.oidc_configured or self.dev_mode

    @property
    def allowed_email_domains(self) -> list[str]:
        return [d.strip().lower().lstrip("@") for d in (self.oidc_allowed_domains or "").split(",")
                if d.strip()]

    def check_console(self) -> None:
        """Refuse to start with a half-configured sign-in."""
        if not (self.oidc_issuer or self.oidc_client_id or self.oidc_client_secret):
            return
        missing = [name for name, value in (
            ("INCIDENT_OIDC_ISSUER", self.oidc_issuer),
            ("INCIDENT_OIDC_CLIENT_ID", self.oidc_client_id),
            ("INCIDENT_OIDC_CLIENT_SECRET", self.oidc_client_secret),
            ("INCIDENT_SESSION_SECRET", self.session_secret),
        ) if not value]
        if missing:
            raise ConfigurationError(
                "the console's OpenID Connect sign-in needs " + ", ".join(missing)
            )

    def check_receiver_auth(self) -> None:
        """Refuse to serve unauthenticated unless the operator said so explicitly."""
        if self.dev_mode:
            return
        if self.webhook_auth == "bearer" and self.webhook_token is None:
            raise ConfigurationError(
                "INCIDENT_WEBHOOK_TOKEN is not set; set it, or set INCIDENT_WEBHOOK_AUTH=none "
                "to accept unauthenticated webhooks"
            )
        if self.api_auth == "bearer" and self.api_token is None:
            raise ConfigurationError(
                "INCIDENT_API_TOKEN is not set; set it, or set INCIDENT_API_AUTH=none "
                "to serve /api/* without authentication"
            )

    def secret_values(self) -> list[str]:
        """Every configured secret, for scrubbing logs."""
        secrets = (
            self.webhook_token,
            self.api_token,
            self.metrics_token,
            self.slack_bot_token,
            self.pagerduty_routing_key,
            self.slack_signing_secret,
            self.pagerduty_webhook_secret,
            self.pagerduty_api_key,
            self.oidc_client_secret,
            self.session_secret,
            self.smtp_url,
        )
        values = [s.get_secret_value() for s in secrets if s is not None and s.get_secret_value()]
        # The SMTP password alone, too: smtplib and servers may echo it apart from the URL.
        password = self.smtp_password
        return values + ([password] if password else [])

    @property
    def smtp_password(self) -> str | None:
        if self.smtp_url is None:
            return None
        password = urlsplit(self.smtp_url.get_secret_value()).password
        return unquote(password) if password else None



def incident_page_url(public_url: str, incident_id: int) -> str:
    """The console's page of one incident: every link sent to people points here."""
    return f"{public_url.rstrip('/')}/incidents/{incident_id}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
