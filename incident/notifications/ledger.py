"""The notifications subscriber: ledger rows for each event, in the event's own transaction.

Because the rows, and the outbox messages that hand them to workers, commit
with the timeline entries they announce, a crash can never leave an event
without its notifications, nor a row that nobody will deliver.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from incident.incidents import outbox
from incident.incidents.events import webhook_received_at
from incident.incidents.models import Incident, TimelineEntry, TimelineKind
from incident.notifications import timers
from incident.notifications.models import Action, Channel, DeliveryStatus, Notification
from incident.notifications.planning import Channels, IncidentState, plan
from incident.queues import NOTIFY, PAGE
from incident.rules import Destinations, Rules, Severity

DELIVER_TASK = "incident.notifications.deliver"
# Whether a Slack row (channel, incident id, action, priority) joins its channel's
# storm message: the storm target when it does, else None (notifications/storm.py).
StormCheck = Callable[[str, int, Action, bool], "str | None"]


def deliver_message(notification_id: int, *, priority: bool) -> outbox.Message:
    """The task message that sends one ledger row; pages have a queue of their own."""
    return outbox.Message(
        DELIVER_TASK, {"notification_id": notification_id}, PAGE if priority else NOTIFY
    )


def _triggered(session: Session, incident_id: int, channel: Channel) -> frozenset[str]:
    """The destinations of ``channel`` that have had a trigger for this incident."""
    return frozenset(
        session.scalars(
            select(Notification.destination).distinct().where(
                Notification.incident_id == incident_id,
                Notification.channel == channel,
                Notification.action == Action.TRIGGER,
            )
        )
    )


# Built once, executed with each row's values: the planner adds a row for every
# destination of every event, and building the statement each time cost more than
# sending it.
_PLAN_ROW = (
    insert(Notification.__table__)
    .on_conflict_do_nothing(
        index_elements=["incident_id", "channel", "action", "step", "destination"]
    )
    .returning(Notification.__table__.c.id)
)


class NotificationPlanner:
    """Subscriber: who is told what about each event, and the escalation timer moved on."""

    def __init__(self, rules: Rules, channels: Channels, *,
                 storms: StormCheck | None = None) -> None:
        self.rules = rules
        self.channels = channels
        self.storms = storms

    def __call__(
        self, session: Session, incident: Incident, entries: Sequence[TimelineEntry],
        now: datetime,
    ) -> None:
        timers.on_timeline(session, incident, entries, self.rules, now)
        if incident.route is None:
            # Chosen once, when it opens: later events go where the first went,
            # whatever the rules file says by then.
            incident.route = self.rules.destinations_for(incident.labels).as_record()
        route = Destinations.from_record(incident.route)
        if incident.in_maintenance:
            # Opened under a maintenance window: the end of its maintenance is told
            # as its opening, and nothing before it is told at all.
            return
        # An incident opened in this very transaction has been told nothing yet.
        new = TimelineKind(entries[0].kind) is TimelineKind.OPENED
        paged = frozenset() if new else _triggered(session, incident.id, Channel.PAGERDUTY)
        slack_parents = frozenset() if new else _triggered(session, incident.id, Channel.SLACK)
        rule_channel = self.rules.slack_channel_for(incident.labels)
        received_at = webhook_received_at(session)
        for entry in entries:
            state = IncidentState(
                Severity(incident.severity), incident.flapping, paged, slack_parents
            )
            policy = self.rules.escalation_for(state.severity)
            planned = plan(
                TimelineKind(entry.kind), entry.detail, state, policy, self.channels,
                rule_channel, route,
            )
            for item in planned:
                # A channel in storm mode: the row waits for the storm message's
                # next edit instead of a delivery of its own.
                stormed = (
                    self.storms(item.target or "", incident.id, item.action, item.priority)
                    if self.storms is not None and item.channel is Channel.SLACK and item.target
                    else None
                )
                row_id = session.execute(_PLAN_ROW, {
                    "incident_id": incident.id,
                    "channel": item.channel,
                    "action": item.action,
                    "step": entry.id,
                    "target": stormed or item.target,
                    "destination": item.destination,
                    "text": item.text,
                    "priority": item.priority,
                    "status": DeliveryStatus.DIGESTED if stormed else DeliveryStatus.PENDING,
                    "created_at": now,
                    "received_at": received_at,
                }).scalar()
                if row_id is not None and not stormed:
                    outbox.put(session, deliver_message(row_id, priority=item.priority), now=now)
                if item.action is Action.TRIGGER and item.channel is Channel.PAGERDUTY:
                    paged |= {item.destination}
                elif item.action is Action.TRIGGER and item.channel is Channel.SLACK:
                    slack_parents |= {item.destination}
