"""The notification ledger and escalation timers.

Every notification is a row before it is a request. The unique key (incident,
channel, action, step, destination) is what makes a retried task, a redelivered message or
a duplicate webhook unable to post twice: they all find the row already there.
``step`` is the id of the timeline entry the notification announces, so each
event is told once per channel, action and destination: the Slack channel or
the name of the variable holding the PagerDuty routing key ('' for the
default), so two routes reach two channels and two services, each once.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from incident.db import Base
from incident.incidents.models import Incident

class Channel(StrEnum):
    SLACK = "slack"
    PAGERDUTY = "pagerduty"
    EMAIL = "email"
    CONSOLE = "console"


class Action(StrEnum):
    TRIGGER = "trigger"
    UPDATE = "update"
    ACKNOWLEDGE = "acknowledge"
    RESOLVE = "resolve"
    ESCALATE = "escalate"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    # Coalesced into the next digest of its Slack channel or mail recipients: the digest flush owns it
    # now, and the sweeper leaves it alone.
    DIGESTED = "digested"
    SENT = "sent"
    FAILED = "failed"


class Notification(Base):
    __tablename__ = "notifications"
    __table_args__ = (
        UniqueConstraint("incident_id", "channel", "action", "step", "destination"),
        CheckConstraint("status IN ('pending','sending','digested','sent','failed')",
                        name="status"),
        Index("ix_notifications_pending", "status", "created_at",
              postgresql_where=text("status IN ('pending','sending','digested')")),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(16))
    step: Mapped[int] = mapped_column(BigInteger)
    # Where it goes (a Slack channel) and what it says beyond the incident itself.
    target: Mapped[str | None] = mapped_column(Text)
    destination: Mapped[str] = mapped_column(Text, default="", server_default="")
    text: Mapped[str | None] = mapped_column(Text)
    priority: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    external_id: Mapped[str | None] = mapped_column(Text)
    last_error: Mapped[str | None] = mapped_column(Text)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When the receiver accepted the webhook whose change this announces; null
    # when no webhook caused it (a timer, a person).
    received_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When the sweeper last handed the row to a worker again: it waits a whole
    # interval before doing so twice.
    swept_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    incident: Mapped[Incident] = relationship(viewonly=True)

    @property
    def at(self) -> datetime:
        return self.sent_at or self.created_at


class EscalationTimer(Base):
    """One per incident: when its escalation policy next acts, polled by beat."""

    __tablename__ = "escalation_timers"
    __table_args__ = (
        Index("ix_escalation_timers_due", "due_at", postgresql_where=text("active")),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    incident_id: Mapped[int] = mapped_column(
        ForeignKey("incidents.id", ondelete="CASCADE"), unique=True
    )
    kind: Mapped[str] = mapped_column(String(16))  # ack_timeout | escalate_after
    severity: Mapped[str] = mapped_column(String(4))
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    fired: Mapped[int] = mapped_column(Integer, default=0)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


# Seen from an incident, for the API; declared here so that incidents need not know us.
Incident.notifications = relationship(Notification, order_by=Notification.id, viewonly=True)


class PagerDutyEvent(Base):
    """A PagerDuty V3 webhook event applied to one of our incidents.

    PagerDuty retries a delivery it did not see answered, so the event id is the
    key: the row is inserted in the transaction that applies the event, and a
    second delivery finds it there. It also remembers which PagerDuty incident
    is ours, for events (notes) that name only PagerDuty's incident id.
    """

    __tablename__ = "pagerduty_events"

    event_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    event_type: Mapped[str] = mapped_column(String(64))
    pagerduty_incident_id: Mapped[str | None] = mapped_column(String(255), index=True)
    incident_id: Mapped[int] = mapped_column(
        ForeignKey("incidents.id", ondelete="CASCADE"), index=True
    )
    # When PagerDuty says it happened: a transition older than one already seen is skipped.
    occurred_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
