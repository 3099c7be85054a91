"""What the console's incident list asks of PostgreSQL: one page, and the counts per severity.

Open incidents come first, newest first within each; a page is a LIMIT/OFFSET
over that order, and the counts are one GROUP BY over the same filters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import Text, case, cast, func, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from incident.incidents.models import Incident, IncidentStatus

PAGE_SIZE = 50
# Deep enough for any real backlog; beyond it OFFSET would only cost.
MAX_PAGE = 1_000
STATUSES = (IncidentStatus.TRIGGERED, IncidentStatus.ACKNOWLEDGED, IncidentStatus.RESOLVED)
SEVERITIES = ("SEV1", "SEV2", "SEV3", "SEV4")
TEXT_LIMIT = 200


@dataclass(frozen=True)
class Filters:
    """The list's filters, from the query string; anything unknown is ignored."""

    status: str | None = None
    severity: str | None = None
    text: str = ""
    page: int = 1

    @classmethod
    def of(cls, query: Mapping[str, str]) -> Filters:
        status = query.get("status")
        severity = query.get("severity")
        try:
            page = min(max(int(query.get("page", "1")), 1), MAX_PAGE)
        except ValueError:
            page = 1
        return cls(
            status=status if status in STATUSES else None,
            severity=severity if severity in SEVERITIES else None,
            text=(query.get("q") or "").replace("\x00", "").strip()[:TEXT_LIMIT],
            page=page,
        )

    def query(self, **changes: object) -> dict[str, str]:
        """These filters as query parameters (for links), with ``changes`` applied."""
        values: dict[str, object] = {
            "status": self.status, "severity": self.severity, "q": self.text, "page": self.page,
        }
        values.update(changes)
        return {
            name: str(value) for name, value in values.items()
            if value and not (name == "page" and value == 1)
        }


@dataclass(frozen=True)
class IncidentList:
    rows: Sequence[Incident]
    counts: dict[str, int]
    has_next: bool

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _conditions(filters: Filters, *, with_severity: bool = True) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if filters.status:
        conditions.append(Incident.status == filters.status)
    if with_severity and filters.severity:
        conditions.append(Incident.severity == filters.severity)
    if filters.text:
        conditions.append(or_(
            Incident.title.icontains(filters.text, autoescape=True),
            cast(Incident.labels, Text).icontains(filters.text, autoescape=True),
        ))
    return conditions


def incident_list(session: Session, filters: Filters) -> IncidentList:
    resolved_last = case((Incident.status == IncidentStatus.RESOLVED, 1), else_=0)
    rows = session.scalars(
        select(Incident)
        .where(*_conditions(filters))
        .order_by(resolved_last, Incident.id.desc())
        .offset((filters.page - 1) * PAGE_SIZE)
        .limit(PAGE_SIZE + 1)
    ).all()
    # The counts ignore the severity filter, so each reads as "this many if you pick it".
    counted = session.execute(
        select(Incident.severity, func.count())
        .where(*_conditions(filters, with_severity=False))
        .group_by(Incident.severity)
    ).all()
    counts = dict.fromkeys(SEVERITIES, 0)
    counts.update(dict(counted))
    return IncidentList(rows=rows[:PAGE_SIZE], counts=counts, has_next=len(rows) > PAGE_SIZE)
