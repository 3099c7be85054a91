"""Escalation timers: rows in PostgreSQL, polled by beat, never Celery ETAs.

A timer is (re)armed when an incident opens, reopens or changes severity (or
its maintenance ends, told as its opening), and disarmed once it is
acknowledged or resolved, and while it is in maintenance. Firing locks each due timer's
incident, then the timer (the order every transition uses), with SKIP LOCKED,
and moves the timer on in the same transaction, so two beats polling at once
never fire the same step twice, and a restart loses nothing: the row is still
due.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from incident.incidents.lifecycle import SYSTEM, Lifecycle, announced_opening
from incident.incidents.models import Incident, IncidentStatus, TimelineEntry, TimelineKind
from incident.notifications.models import EscalationTimer
from incident.rules import Rules, Severity

_ARMS = {
    TimelineKind.OPENED,
    TimelineKind.REOPENED,
    TimelineKind.SEVERITY_CHANGED,
    TimelineKind.UNACKNOWLEDGED,
}
# What a lock reads is what decides, not an earlier copy in the session.
_FRESH = {"populate_existing": True}
ACK_TIMEOUT = "ack_timeout"
ESCALATE_AFTER = "escalate_after"


def on_timeline(
    session: Session, incident: Incident, entries: Sequence[TimelineEntry], rules: Rules,
    now: datetime,
) -> None:
    if incident.status != IncidentStatus.TRIGGERED or incident.in_maintenance:
        _disarm(session, incident.id)
    elif any(
        TimelineKind(e.kind) in _ARMS or announced_opening(e.kind, e.detail) for e in entries
    ):
        arm(session, incident, rules, now)


# Built once: every opening arms a timer.
_timers = EscalationTimer.__table__
_ARM = insert(_timers)
_ARM = _ARM.on_conflict_do_update(
    index_elements=[_timers.c.incident_id],
    set_={name: _ARM.excluded[name] for name in ("kind", "severity", "due_at", "fired", "active")},
)


def arm(session: Session, incident: Incident, rules: Rules, now: datetime) -> None:
    policy = rules.escalation_for(Severity(incident.severity))
    if policy.ack_timeout is not None:
        kind, due = ACK_TIMEOUT, now + policy.ack_timeout
    elif policy.escalate_after is not None:
        kind, due = ESCALATE_AFTER, now + policy.escalate_after
    else:
        _disarm(session, incident.id)
        return
    session.execute(_ARM, {
        "incident_id": incident.id, "kind": kind, "severity": incident.severity, "due_at": due,
        "fired": 0, "active": True,
    })


def _disarm(session: Session, incident_id: int) -> None:
    timer = session.scalars(
        select(EscalationTimer).where(EscalationTimer.incident_id == incident_id)
    ).one_or_none()
    if timer is not None:
        timer.active = False


def fire_due(session: Session, rules: Rules, life: Lifecycle, *, limit: int = 100) -> int:
    """Advance every due timer through the lifecycle; returns how many fired.

    Everyone else locks an incident before its timer (a transition disarms or
    re-arms it under the incident's lock), so this does too: the due timers
    are read without a lock, then each incident and its timer are locked in
    that order and the timer checked again. An incident or timer another
    transaction holds is skipped, left for the next poll: two beats never fire
    the same step, and a beat never waits behind a person resolving by hand.
    """
    due = session.execute(
        select(EscalationTimer.id, EscalationTimer.incident_id)
        .where(EscalationTimer.active, EscalationTimer.due_at <= life.now)
        .order_by(EscalationTimer.due_at)
        .limit(limit)
    ).all()
    fired = 0
    for timer_id, incident_id in due:
        incident = session.scalars(
            select(Incident).where(Incident.id == incident_id).with_for_update(skip_locked=True),
            execution_options=_FRESH,
        ).one_or_none()
        if incident is None:
            continue
        timer = session.scalars(
            select(EscalationTimer)
            .where(
                EscalationTimer.id == timer_id,
                EscalationTimer.active,
                EscalationTimer.due_at <= life.now,
            )
            .with_for_update(skip_locked=True),
            execution_options=_FRESH,
        ).one_or_none()
        if timer is None:  # fired, disarmed or re-armed since it was read
            continue
        if incident.status != IncidentStatus.TRIGGERED or incident.in_maintenance:
            timer.active = False
            continue
        _fire(timer, incident, rules, life)
        fired += 1
    return fired


def _fire(timer: EscalationTimer, incident: Incident, rules: Rules, life: Lifecycle) -> None:
    policy = rules.escalation_for(Severity(incident.severity))
    if timer.kind == ACK_TIMEOUT:
        timer.fired += 1
        times = max(1, policy.repeat)
        life.escalate(
            incident, SYSTEM, reason=f"not acknowledged within {policy.ack_timeout}",
            step=timer.fired, of=times,
        )
        if timer.fired >= times or policy.ack_timeout is None:
            timer.active = False
        else:
            timer.due_at = life.now + policy.ack_timeout
        return

    target = policy.escalate_to
    timer.active = False
    if target is None:
        return
    reason = f"still open after {policy.escalate_after}"
    # The raised severity re-arms the timer for its own policy (on_timeline).
    if life.raise_severity(incident, SYSTEM, target, reason=reason) is not None:
        life.escalate(incident, SYSTEM, reason=reason)
