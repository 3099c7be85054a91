"""One row per Alertmanager silence made for an incident."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    String,
    Text,
    and_,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, foreign, mapped_column, relationship

from incident.db import Base
from incident.incidents.models import Incident


class IncidentSilence(Base):
    """A silence asked of Alertmanager for an incident.

    The row is written, with its ``reference``, before Alertmanager is asked,
    and ``silence_id`` filled in once it answered: a row without one is a
    request whose outcome is not known yet (its process stopped, or no
    Alertmanager answered in time). The reference travels in the silence's
    comment, so such a silence can still be found, and expired, later.
    """

    __tablename__ = "incident_silences"
    __table_args__ = (Index("ix_incident_silences_incident_id_id", "incident_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id", ondelete="CASCADE"))
    silence_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    reference: Mapped[str] = mapped_column(String(120), unique=True)
    # Alertmanager matcher syntax, one per group label: service="api".
    matchers: Mapped[list[str]] = mapped_column(ARRAY(Text))
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(Text)
    expired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


# Seen from an incident, for the API: the silences Alertmanager confirmed.
# Declared here so that incidents need not know us.
Incident.silences = relationship(
    IncidentSilence,
    primaryjoin=and_(
        Incident.id == foreign(IncidentSilence.incident_id),
        IncidentSilence.silence_id.is_not(None),
    ),
    order_by=IncidentSilence.id,
    viewonly=True,
)
