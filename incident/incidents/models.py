"""Tables for alert groups, incidents, their alerts and their timeline."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

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
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from incident.db import Base

class IncidentStatus(StrEnum):
    TRIGGERED = "triggered"
    ACKNOWLEDGED = "acknowledged"
    UNACKNOWLEDGED = "unacknowledged"
    RESOLVED = "resolved"


class TimelineKind(StrEnum):
    OPENED = "opened"
    ALERT_ADDED = "alert_added"
    ALERT_RESOLVED = "alert_resolved"
    SEVERITY_CHANGED = "severity_changed"
    REMEDIATION = "remediation"
    NOTIFIED = "notified"
    ACKNOWLEDGED = "acknowledged"
    UNACKNOWLEDGED = "unacknowledged"
    RESOLVED = "resolved"
    REOPENED = "reopened"
    FLAPPING = "flapping"
    SETTLED = "settled"
    ESCALATED = "escalated"
    SILENCED = "silenced"
    UNSILENCED = "unsilenced"
    MAINTENANCE = "maintenance"
    NOTE = "note"


def _timestamp(**kwargs: Any) -> Any:
    return mapped_column(DateTime(timezone=True), **kwargs)


class AlertGroup(Base):
    """One Alertmanager group (receiver + groupKey), alive across its incidents.

    Every change to a group happens under a row lock on this row, which is what
    makes concurrent deliveries of the same notification converge on one incident.
    """

    __tablename__ = "alert_groups"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    group_hash: Mapped[str] = mapped_column(String(64), unique=True)
    receiver: Mapped[str] = mapped_column(Text)
    group_key: Mapped[str] = mapped_column(Text)
    # Bumped by every applied change; orders the digest cache in Redis.
    revision: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    last_digest: Mapped[str | None] = mapped_column(String(64))
    incident_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = _timestamp(server_default=func.now())


class Incident(Base):
    __tablename__ = "incidents"
    __table_args__ = (
        CheckConstraint("severity IN ('SEV1','SEV2','SEV3','SEV4')", name="severity"),
        CheckConstraint("status IN ('triggered','acknowledged','resolved')", name="status"),
        # At most one open incident per group, whatever races above it.
        Index(
            "uq_incidents_open_group",
            "group_id",
            unique=True,
            postgresql_where=text("status <> 'resolved'"),
        ),
        Index("ix_incidents_group_id_id", "group_id", "id"),
        Index("ix_incidents_status_id", "status", "id"),
        Index("ix_incidents_severity_id", "severity", "id"),
        Index("ix_incidents_resolved_at", "resolved_at"),
        # The release poll's few candidates, without a scan.
        Index("ix_incidents_in_maintenance", "id", postgresql_where=text("in_maintenance")),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    key: Mapped[str] = mapped_column(String(80), unique=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("alert_groups.id"))
    title: Mapped[str] = mapped_column(Text)
    summary: Mapped[str | None] = mapped_column(Text)
    severity: Mapped[str] = mapped_column(String(4))
    status: Mapped[str] = mapped_column(String(16), default=IncidentStatus.TRIGGERED)
    labels: Mapped[dict[str, str]] = mapped_column(JSONB, default=dict)
    group_labels: Mapped[dict[str, str]] = mapped_column(JSONB, default=dict)
    receiver: Mapped[str] = mapped_column(Text)
    external_url: Mapped[str] = mapped_column(Text, default="")
    flapping: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    # Opened under a maintenance window: nobody is told until no window covers it.
    in_maintenance: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default="false"
    )
    # New fingerprints beyond grouping's cap on stored alerts (see grouping.py).
    alerts_dropped: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = _timestamp()
    # When its current episode began: its opening, or its latest reopening
    # (null for incidents older than this column: created_at stands in).
    opened_at: Mapped[datetime | None] = _timestamp()
    updated_at: Mapped[datetime] = _timestamp()
    acknowledged_at: Mapped[datetime | None] = _timestamp()
    resolved_at: Mapped[datetime | None] = _timestamp()
    # Who acknowledged or resolved it, for the current state: the actor's
    # ``by``/``user``/``name`` (see lifecycle.Actor), or null.
    acknowledged_by: Mapped[dict[str, str] | None] = mapped_column(JSONB)
    resolved_by: Mapped[dict[str, str] | None] = mapped_column(JSONB)
    # Where it is told, chosen by the rules file's routes when it opened (see
    # rules/routes.py Destinations): later notifications go to the same places.
    route: Mapped[dict[str, Any] | None] = mapped_column(JSONB)

    alerts: Mapped[list[Alert]] = relationship(
        back_populates="incident", order_by="Alert.id", cascade="all, delete-orphan",
        passive_deletes=True,
    )
    timeline: Mapped[list[TimelineEntry]] = relationship(
        back_populates="incident", order_by="TimelineEntry.id", cascade="all, delete-orphan",
        passive_deletes=True,
    )
    # The notifications and remediations domains add ``notifications`` and
    # ``remediations`` from above: the bottom layer knows nothing of them.


class Alert(Base):
    __tablename__ = "alerts"
    __table_args__ = (UniqueConstraint("incident_id", "fingerprint"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id", ondelete="CASCADE"))
    fingerprint: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16))
    severity: Mapped[str] = mapped_column(String(4))
    labels: Mapped[dict[str, str]] = mapped_column(JSONB)
    annotations: Mapped[dict[str, str]] = mapped_column(JSONB)
    starts_at: Mapped[datetime] = _timestamp()
    ends_at: Mapped[datetime | None] = _timestamp()
    generator_url: Mapped[str] = mapped_column(Text, default="")

    incident: Mapped[Incident] = relationship(back_populates="alerts")


class TimelineEntry(Base):
    __tablename__ = "timeline_entries"
    __table_args__ = (Index("ix_timeline_entries_incident_id_at", "incident_id", "at"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id", ondelete="CASCADE"))
    at: Mapped[datetime] = _timestamp()
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)

    incident: Mapped[Incident] = relationship(back_populates="timeline")
