"""What every integration promises: the Protocols callers depend on, the view of
an incident they render, and the typed errors that tell a task whether to retry.

Adapters never touch the database or Celery. A task builds an ``IncidentView``,
calls an adapter, and decides from the exception type (and ``retry_after``)
whether to retry; nothing in here sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from collections.abc import Sequence
from typing import Protocol, runtime_checkable
from urllib.parse import quote

# The Slack message metadata type that marks our messages, for crash recovery.
NOTIFICATION_EVENT_TYPE = "incident_notification"

# PagerDuty's Events API v2 severities; the rules file names one per SEV.
PAGER_SEVERITIES = ("critical", "error", "warning", "info")


class DeliveryError(Exception):
    """A notification did not reach its service.

    ``retryable`` says whether trying again later can succeed; ``retry_after``
    (seconds) is the service's own hint, set for rate limits. ``code`` is the
    service's error string (Slack's ``channel_not_found``) or HTTP status, when
    there is one. ``maybe_delivered`` is set when no answer came back (a
    timeout, a dropped connection): the service may have acted, so a retry
    must look before it sends again. Messages never carry a token or routing key.
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        code: str | None = None,
        maybe_delivered: bool = False,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.code = code
        self.maybe_delivered = maybe_delivered


class RateLimited(DeliveryError):
    """HTTP 429 or Slack's ``ratelimited``: retry after ``retry_after`` seconds."""

    retryable = True


class TransientDeliveryError(DeliveryError):
    """A 5xx, a timeout or a dropped connection: retry with backoff."""

    retryable = True


class PermanentDeliveryError(DeliveryError):
    """The request itself is wrong (bad token, unknown channel, invalid event):
    retrying the same request cannot succeed."""

    retryable = False


@dataclass(frozen=True)
class AlertView:
    fingerprint: str
    status: str
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    generator_url: str | None = None


@dataclass(frozen=True)
class IncidentView:
    """Everything an adapter may render, detached from the ORM."""

    id: int
    key: str
    title: str
    summary: str | None
    severity: str
    status: str
    flapping: bool
    labels: dict[str, str]
    annotations: dict[str, str]
    alerts: tuple[AlertView, ...]
    external_url: str
    incident_url: str
    created_at: datetime
    # Who acknowledged and who resolved it: {"by", "user", "name"} as recorded.
    acknowledged_by: dict[str, str] | None = None
    resolved_by: dict[str, str] | None = None

    @property
    def firing_alerts(self) -> tuple[AlertView, ...]:
        return tuple(alert for alert in self.alerts if alert.status == "firing")

    def silence_url(self) -> str | None:
        """Alertmanager's "new silence" form, pre-filled with the common labels.

        The UI reads ``#/silences/new?filter={name="value",...}`` (matcher
        syntax, URL-encoded). None without an Alertmanager URL or labels, since
        an empty filter would offer to silence everything.
        """
        if not self.external_url or not self.labels:
            return None
        matchers = ",".join(
            f'{name}="{_matcher_escape(value)}"' for name, value in sorted(self.labels.items())
        )
        return (
            f"{self.external_url.rstrip('/')}/#/silences/new"
            f"?filter={quote('{' + matchers + '}', safe='')}"
        )


def _matcher_escape(value: str) -> str:
    # Alertmanager's matcher parser reads Go-style escapes inside double quotes.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@runtime_checkable
class SlackPoster(Protocol):
    """One parent message per incident, edited in place; later events in its thread.

    Every message we post carries Slack message metadata
    ``{"event_type": "incident_notification", "event_payload": {"ledger_id": N}}``
    so that ``find_posted`` can tell, after a crash between Slack's answer and
    our commit, that the message already exists.
    """

    def post_parent(
        self, channel: str, incident: IncidentView, *, ledger_id: int, stamp: str = ""
    ) -> str:
        """Post the incident's parent message; returns its ``ts``.

        ``stamp`` (the ledger row's creation time) goes beside ``ledger_id`` in
        the message, so a lookup never takes another installation's message,
        or one posted before a database restore, for this row's.
        """
        ...

    def update_parent(self, channel: str, ts: str, incident: IncidentView) -> None:
        """Re-render the parent message with the incident's current state."""
        ...

    def reply(
        self, channel: str, thread_ts: str, text: str, *, ledger_id: int, stamp: str = ""
    ) -> str:
        """Post plain ``text`` in the parent's thread; returns the reply's ``ts``."""
        ...

    def post_digest(
        self, channel: str, lines: list[str], *, ledger_id: int,
        covers: Sequence[tuple[int, str]] = (),
    ) -> str:
        """Post one top-level message listing ``lines``; returns its ``ts``.

        ``covers`` names each ledger row (id, stamp) the digest stands for.
        """
        ...

    def find_digested(
        self, channel: str, *, rows: Sequence[tuple[int, str]], oldest: float | None = None
    ) -> dict[int, str]:
        """For each ledger row (id, stamp) a digest already posted covers: that digest's ``ts``."""
        ...

    def find_posted(
        self,
        channel: str,
        *,
        ledger_id: int,
        stamp: str = "",
        thread_ts: str | None = None,
        oldest: float | None = None,
    ) -> str | None:
        """The ``ts`` of a message already posted for ``ledger_id``, else None.

        Searches the thread of ``thread_ts`` when given, otherwise the channel's
        history since ``oldest`` (a Unix time).
        """
        ...


@runtime_checkable
class Pager(Protocol):
    """PagerDuty-style paging: one alert per incident, keyed by ``incident.key``."""

    def trigger(self, incident: IncidentView, *, severity: str) -> str:
        """Open (or re-trigger) the alert; returns the dedup key, ``incident.key``."""
        ...

    def acknowledge(self, dedup_key: str) -> None: ...

    def resolve(self, dedup_key: str) -> None: ...


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
