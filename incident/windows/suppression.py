"""Holding back incidents that open under a maintenance window, and letting them go.

``MaintenanceGate`` is the first subscriber of every process's event bus: when
an incident opens or reopens under active windows whose matchers accept its
labels, the lifecycle puts it in maintenance before the notification planner
and the remediation scheduler see the opening; both skip an incident in
maintenance (they read its flag and know nothing of windows).

``release_ended``, polled by beat and run at once when a window is ended early,
takes each incident in maintenance that no active window covers any more,
under its row lock (SKIP LOCKED, then checked again), and has the lifecycle
clear the flag with a ``maintenance`` entry that stands for the opening it held
back: notified and remediated then, once, as if it had just opened. A resolved
one is released without a word. Overlapping windows hold an incident until
the last of them ends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from incident.db import session_scope
from incident.incidents.events import EventBus
from incident.incidents.lifecycle import OPENINGS, Lifecycle
from incident.incidents.models import Incident, TimelineEntry, TimelineKind
from incident.rules.matchers import Matcher, matches_all, parse_matcher
from incident.windows.models import MaintenanceWindow

RELEASE_TASK = "incident.windows.release_ended"
# What a lock reads is what decides, not an earlier copy in the session.
_FRESH = {"populate_existing": True}


@lru_cache(maxsize=4096)
def _parsed(text: str) -> Matcher:
    return parse_matcher(text)


def active_windows(session: Session, now: datetime) -> Sequence[MaintenanceWindow]:
    return session.scalars(
        select(MaintenanceWindow).where(
            MaintenanceWindow.ended_at.is_(None),
            MaintenanceWindow.starts_at <= now,
            MaintenanceWindow.ends_at > now,
        ).order_by(MaintenanceWindow.id)
    ).all()


def covering(windows: Sequence[MaintenanceWindow], labels: Mapping[str, str]) -> list[int]:
    """The ids of the windows whose every matcher accepts ``labels``."""
    return [
        window.id for window in windows
        if matches_all(tuple(_parsed(each) for each in window.matchers), labels)
    ]


class MaintenanceGate:
    """Subscriber, first on the bus: an incident opening under a window goes into maintenance."""

    def __call__(
        self, session: Session, incident: Incident, entries: Sequence[TimelineEntry],
        now: datetime,
    ) -> None:
        openings = [TimelineKind(e.kind) for e in entries if TimelineKind(e.kind) in OPENINGS]
        if not openings:
            return
        windows = covering(active_windows(session, now), incident.labels)
        # Entries of its own, told to nobody: this subscriber's work is to keep quiet.
        with Lifecycle(session, now=now) as life:
            if windows and not incident.in_maintenance:
                life.enter_maintenance(incident, windows=windows)
            elif not windows and incident.in_maintenance:
                # Its windows ended before the poll released it: this opening is told as usual.
                life.leave_maintenance(incident, opening=openings[-1])


def release(engine: Engine, events: EventBus, *, now: datetime | None = None) -> int:
    """``release_ended`` in a transaction of its own."""
    with session_scope(engine) as session:
        return release_ended(session, events, now=now or datetime.now(UTC))


def release_ended(session: Session, events: EventBus, *, now: datetime, limit: int = 100) -> int:
    """Release incidents no active window covers any more; answers how many.

    Two polls at once release each incident once: the second finds its row
    locked and skips it, or finds it already out of maintenance.
    """
    held = session.execute(
        select(Incident.id, Incident.labels).where(Incident.in_maintenance).order_by(Incident.id)
    ).all()
    if not held:
        return 0
    windows = active_windows(session, now)
    uncovered = [incident_id for incident_id, labels in held if not covering(windows, labels)]
    released = 0
    with Lifecycle(session, events=events, now=now) as life:
        for incident_id in uncovered[:limit]:
            incident = session.scalars(
                select(Incident)
                .where(Incident.id == incident_id, Incident.in_maintenance)
                .with_for_update(skip_locked=True),
                execution_options=_FRESH,
            ).one_or_none()
            if incident is None:  # released by another poll, or busy: the next poll looks again
                continue
            if covering(windows, incident.labels):  # its labels changed since they were read
                continue
            life.leave_maintenance(incident, opening=_latest_opening(session, incident_id))
            released += 1
    return released


def _latest_opening(session: Session, incident_id: int) -> TimelineKind:
    kind = session.scalar(
        select(TimelineEntry.kind)
        .where(TimelineEntry.incident_id == incident_id,
               TimelineEntry.kind.in_([k.value for k in OPENINGS]))
        .order_by(TimelineEntry.id.desc())
        .limit(1)
    )
    return TimelineKind(kind) if kind else TimelineKind.OPENED
