"""How long a webhook took to reach the people told about it.

A ledger row planned in the transaction of a webhook's change carries the
receiver's accept time (``received_at``). When its provider accepts it (Slack
answers ok, PagerDuty 202, the mail server takes the message), the time since
is observed in ``incident_webhook_to_notification_seconds``, once the row's
``sent`` state commits: a redelivered task finds the row sent and observes
nothing. Rows no webhook caused (timers, people), and the console, are not
observed.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from incident.incidents.models import Incident
from incident.metrics import observe_after_commit
from incident.notifications.models import Channel, Notification

HISTOGRAM = "incident_webhook_to_notification_seconds"
TIMED_CHANNELS = frozenset({Channel.SLACK, Channel.PAGERDUTY, Channel.EMAIL})


def observe_delivered(session: Session, row: Notification, severity: str) -> None:
    """``row`` was just marked sent in ``session``; ``severity``: its incident's now."""
    if row.received_at is None or row.sent_at is None or row.channel not in TIMED_CHANNELS:
        return
    observe_after_commit(session, HISTOGRAM, (row.sent_at - row.received_at).total_seconds(),
                         channel=str(row.channel), severity=str(severity))


def observe_rows_delivered(session: Session, rows: Sequence[Notification]) -> None:
    """Rows told together (a digest, a storm message), just marked sent in ``session``."""
    timed = {row.incident_id for row in rows if row.received_at is not None}
    if not timed:
        return
    severity = dict(session.execute(
        select(Incident.id, Incident.severity).where(Incident.id.in_(timed))
    ).tuples().all())
    for row in rows:
        if row.incident_id in severity:
            observe_delivered(session, row, severity[row.incident_id])
