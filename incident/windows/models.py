"""The maintenance_windows table."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, DateTime, Identity, Index, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from incident.db import Base


class MaintenanceWindow(Base):
    """A stretch of time in which incidents whose labels match are told to nobody.

    ``ends_at`` is the end asked for; ``ended_at`` is set when the window is ended
    early (a pending one that is ended never starts). ``matchers`` are kept in
    Alertmanager's syntax, each as ``str(Matcher)`` prints it.
    """

    __tablename__ = "maintenance_windows"
    __table_args__ = (
        CheckConstraint("ends_at > starts_at", name="ends_after_start"),
        # What is active, or may still be: the gate's and the release poll's question.
        Index("ix_maintenance_windows_ends_at", "ends_at", postgresql_where=text("ended_at IS NULL")),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    matchers: Mapped[list[str]] = mapped_column(JSONB)
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    comment: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The Alertmanager silence scheduled for the same time, when Alertmanager is configured.
    silence_id: Mapped[str | None] = mapped_column(String(64))

    def active(self, now: datetime) -> bool:
        return self.ended_at is None and self.starts_at <= now < self.ends_at
