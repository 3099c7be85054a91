"""One row per remediation run: what ran for an incident, how often, and how it ended."""

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
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from incident.db import Base
from incident.incidents.models import Incident


class RunStatus(StrEnum):
    # Waiting for its next attempt (the first, or a retry after a backoff).
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED_CIRCUIT_OPEN = "skipped_circuit_open"
    # The incident resolved before the run finished: the problem went away,
    # so further attempts would only poke a healthy system.
    CANCELLED = "cancelled"


FINISHED = (
    RunStatus.SUCCEEDED,
    RunStatus.FAILED,
    RunStatus.SKIPPED_CIRCUIT_OPEN,
    RunStatus.CANCELLED,
)


def _timestamp(**kwargs) -> Mapped[datetime | None]:
    return mapped_column(DateTime(timezone=True), **kwargs)


class RemediationRun(Base):
    """A remediation started by one opening (or reopening) of an incident.

    ``(incident_id, name, step)`` is unique, ``step`` being the timeline entry
    that started it, so however often that entry's transaction is retried or
    its task redelivered, there is one run. Each attempt is claimed by a
    conditional update on ``attempts``, so a duplicate message for an attempt
    already taken does nothing.
    """

    __tablename__ = "remediation_runs"
    __table_args__ = (
        UniqueConstraint("incident_id", "name", "step"),
        CheckConstraint(
            "status IN ('pending','running','succeeded','failed','skipped_circuit_open',"
            "'cancelled')",
            name="status",
        ),
        # The sweeper's two questions: overdue pending attempts, expired leases.
        Index("ix_remediation_runs_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(BigInteger)
    name: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(24), default=RunStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    max_attempts: Mapped[int] = mapped_column(Integer)
    breaker_key: Mapped[str] = mapped_column(Text)
    last_error: Mapped[str | None] = mapped_column(Text)
    output: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = _timestamp()
    finished_at: Mapped[datetime | None] = _timestamp()
    # When the pending attempt is due; the sweeper re-sends it if nobody took it.
    next_attempt_at: Mapped[datetime | None] = _timestamp()
    # Its next attempt waits for the sweeper (a long backoff), not in the broker.
    wake_by_poll: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    # A running attempt past this is lost (its worker died): Celery's hard time
    # limit ends every attempt before it.
    lease_until: Mapped[datetime | None] = _timestamp()


# Seen from an incident, for the API; declared here so that incidents need not know us.
Incident.remediations = relationship(RemediationRun, order_by=RemediationRun.id, viewonly=True)
