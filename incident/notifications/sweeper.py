"""Beat's notification jobs: escalation timers that are due, and rows nobody is working on.

Every row reached a worker once through the outbox. The sweeper hands a row
to a worker again only when that worker is known to be gone (``sending``
under a claim older than ``SWEEP_AFTER``), or, as a last resort, when a
``pending`` row has waited ``LOST_AFTER`` (its message lost with the broker's
data). Each time it stamps the row, so a row waiting in a backed-up queue is
never sent twice a sweep. Digested rows belong to their channel's digest
flush, and storm rows to their channel's storm message; the sweeper only
makes sure an edit or a flush is scheduled.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, func, or_, select

from incident.db import session_scope
from incident.incidents import outbox
from incident.incidents.events import EventBus
from incident.incidents.lifecycle import Lifecycle
from incident.notifications import timers
from incident.notifications.digest import SlackDigests, waiting_channels
from incident.notifications.ledger import deliver_message
from incident.notifications.storm import PREFIX as STORM_PREFIX
from incident.notifications.storm import SlackStorms
from incident.notifications.models import DeliveryStatus, Notification
from incident.rules import Rules

SWEEP_AFTER = timedelta(minutes=2)
LOST_AFTER = timedelta(minutes=15)
BATCH = 500


def fire_escalations(rules: Rules, events: EventBus, *, now: datetime | None = None) -> int:
    """Advance every due escalation timer; what it records is announced like any event."""
    with session_scope() as session, Lifecycle(session, events=events, now=now) as life:
        return timers.fire_due(session, rules, life)


def sweep_undelivered(digests: SlackDigests, *, now: datetime | None = None,
                      batch: int = BATCH, storms: SlackStorms | None = None) -> int:
    """Hand rows whose worker died (or whose message was lost) to a worker again, once."""
    now = now or datetime.now(UTC)
    dead_claim = now - SWEEP_AFTER
    with session_scope() as session:
        rows = session.scalars(
            select(Notification)
            .where(
                or_(
                    and_(
                        Notification.status == DeliveryStatus.SENDING,
                        Notification.claimed_at < dead_claim,
                        or_(Notification.swept_at.is_(None), Notification.swept_at < dead_claim),
                    ),
                    and_(
                        Notification.status == DeliveryStatus.PENDING,
                        func.coalesce(Notification.swept_at, Notification.created_at)
                        < now - LOST_AFTER,
                    ),
                )
            )
            .order_by(Notification.id)
            .limit(batch)
            .with_for_update(skip_locked=True)
        ).all()
        for row in rows:
            row.swept_at = now
            outbox.put(session, deliver_message(row.id, priority=row.priority), now=now)
    storm_channels = set(storms.channels()) if storms is not None else set()
    for channel in waiting_channels(dead_claim):
        if channel.startswith(STORM_PREFIX):
            storm_channels.add(channel.removeprefix(STORM_PREFIX))
        else:
            digests.schedule(channel)
    for channel in sorted(storm_channels):
        if storms is not None:
            storms.schedule(channel, 0)
    return len(rows)
