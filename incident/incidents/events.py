"""Domain events: what happened to an incident, handed to whoever reacts to it.

The lifecycle writes a timeline entry for every change and publishes it here,
inside the change's own transaction. Subscribers (notification planning,
remediation scheduling) are registered by each process's context; they write
their own rows and outbox messages in that same transaction. Grouping, the
API and the timers never call them, and this package never imports them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy.orm import Session

from incident.incidents.models import Incident, TimelineEntry


class Subscriber(Protocol):
    def __call__(
        self, session: Session, incident: Incident, entries: Sequence[TimelineEntry],
        now: datetime,
    ) -> None: ...


class EventBus:
    """The subscribers of one process, called in the order they were added."""

    def __init__(self, *subscribers: Subscriber) -> None:
        self.subscribers: list[Subscriber] = list(subscribers)

    def publish(
        self, session: Session, incident: Incident, entries: Sequence[TimelineEntry],
        now: datetime,
    ) -> None:
        if not entries:
            return
        for subscriber in self.subscribers:
            subscriber(session, incident, entries, now)


# For code run without a process context (tests of one piece, scripts): events
# are recorded on the timeline and nobody reacts.
NO_SUBSCRIBERS = EventBus()


_RECEIVED_AT = "incident.events.webhook_received_at"


@contextmanager
def caused_by_webhook(session: Session, received_at: float | None) -> Iterator[None]:
    """Events published within are a webhook's doing: the receiver accepted it at
    ``received_at`` (Unix time), which subscribers may carry on (``webhook_received_at``)."""
    session.info[_RECEIVED_AT] = received_at
    try:
        yield
    finally:
        session.info.pop(_RECEIVED_AT, None)


def webhook_received_at(session: Session) -> datetime | None:
    """When the receiver accepted the webhook behind the events being published;
    None for events no webhook caused (a timer, a person)."""
    received_at = session.info.get(_RECEIVED_AT)
    return None if received_at is None else datetime.fromtimestamp(received_at, UTC)
