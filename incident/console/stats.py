"""The figures behind ``GET /stats``, each one SQL aggregate over the period.

Days are UTC days. Time to acknowledge counts incidents acknowledged (and still
so, or resolved after it) that opened in the period; time to resolve counts
those resolved. Both are in seconds, as a median and a 90th percentile.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import Date, cast, func, select
from sqlalchemy.orm import Session

from incident.console.queries import SEVERITIES
from incident.incidents.models import Incident

PERIODS = (7, 30)


@dataclass(frozen=True)
class Durations:
    """Per severity: how many incidents, and their median and 90th percentile, in seconds."""

    count: dict[str, int]
    median: dict[str, float | None]
    p90: dict[str, float | None]


@dataclass(frozen=True)
class Stats:
    days: int
    day_labels: list[str]
    # Per severity, one count per day of ``day_labels``.
    per_day: dict[str, list[int]]
    acknowledge: Durations
    resolve: Durations

    def chart_data(self) -> dict[str, object]:
        """What the page's charts draw, as JSON."""
        return {
            "days": self.day_labels,
            "per_day": self.per_day,
            "severities": list(SEVERITIES),
            "acknowledge": _minutes(self.acknowledge),
            "resolve": _minutes(self.resolve),
        }


def _minutes(durations: Durations) -> dict[str, list[float | None]]:
    def shown(values: dict[str, float | None]) -> list[float | None]:
        return [None if values[s] is None else round(values[s] / 60, 1) for s in SEVERITIES]

    return {"median": shown(durations.median), "p90": shown(durations.p90)}


def period(asked: str | None) -> int:
    """7 or 30 days; anything else is 7."""
    return int(asked) if asked in {str(days) for days in PERIODS} else PERIODS[0]


def incident_stats(session: Session, days: int, now: datetime | None = None) -> Stats:
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    first = today - timedelta(days=days - 1)
    since = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
    day = cast(func.timezone("UTC", Incident.created_at), Date)
    counted = session.execute(
        select(day, Incident.severity, func.count())
        .where(Incident.created_at >= since)
        .group_by(day, Incident.severity)
    ).all()
    dates = [first + timedelta(days=n) for n in range(days)]
    per_day = {severity: [0] * days for severity in SEVERITIES}
    index = {one: n for n, one in enumerate(dates)}
    for when, severity, number in counted:
        if isinstance(when, date) and when in index and severity in per_day:
            per_day[severity][index[when]] = number
    return Stats(
        days=days,
        day_labels=[one.isoformat() for one in dates],
        per_day=per_day,
        acknowledge=_durations(session, Incident.acknowledged_at, since),
        resolve=_durations(session, Incident.resolved_at, since),
    )


def _durations(session: Session, until, since: datetime) -> Durations:
    seconds = func.extract("epoch", until - Incident.created_at)
    rows = session.execute(
        select(
            Incident.severity,
            func.count(),
            func.percentile_cont(0.5).within_group(seconds),
            func.percentile_cont(0.9).within_group(seconds),
        )
        .where(Incident.created_at >= since, until.is_not(None))
        .group_by(Incident.severity)
    ).all()
    count = dict.fromkeys(SEVERITIES, 0)
    median: dict[str, float | None] = dict.fromkeys(SEVERITIES)
    p90: dict[str, float | None] = dict.fromkeys(SEVERITIES)
    for severity, number, middle, high in rows:
        count[severity] = number
        median[severity] = float(middle)
        p90[severity] = float(high)
    return Durations(count=count, median=median, p90=p90)
