"""The notifications subscriber: ledger rows for each event, in the event's own transaction.

Because the rows, and the outbox messages that hand them to workers, commit
with the timeline entries they announce, a crash can never leave an event
without its notifications, nor a row that nobody will deliver.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import exists, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from incident.incidents import outbox
from incident.incidents.models import Incident, TimelineEntry, TimelineKind
from incident.notifications import timers
from incident.notifications.models import Action, Channel, Notification
from incident.notifications.planning import Channels, IncidentState, email_recipients, plan
from incident.queues import NOTIFY, PAGE
from incident.rules import Rules, Severity

DELIVER_TASK = "incident.notifications.deliver"


def deliver_message(notification_id: int, *, priority: bool) -> outbox.Message:
    """The task message that sends one ledger row; pages have a queue of their own."""
    return outbox.Message(
        DELIVER_TASK, {"notification_id": notification_id}, PAGE if priority else NOTIFY
    )


def _has_trigger(session: Session, incident_id: int, channel: Channel) -> bool:
    return bool(
        session.scalar(
            select(
                exists().where(
                    Notification.incident_id == incident_id,
                    Notification.channel == channel,
                    Notification.action == Action.TRIGGER,
                )
            )
        )
    )


class NotificationPlanner:
    """Subscriber: who is told what about each event, and the escalation timer moved on."""

    def __init__(self, rules: Rules, channels: Channels) -> None:
        self.rules = rules
        self.channels = channels

    def __call__(
        self, session: Session, incident: Incident, entries: Sequence[TimelineEntry],
        now: datetime,
    ) -> None:
        timers.on_timeline(session, incident, entries, self.rules, now)
        if incident.in_maintenance:
            # Opened under a maintenance window: the end of its maintenance is told
            # as its opening, and nothing before it is told at all.
            return
        # An incident opened in this very transaction has been told nothing yet.
        new = TimelineKind(entries[0].kind) is TimelineKind.OPENED
        paged = not new and _has_trigger(session, incident.id, Channel.PAGERDUTY)
        slack_parent = not new and _has_trigger(session, incident.id, Channel.SLACK)
        rule_channel = self.rules.slack_channel_for(incident.labels)
        email_to = email_recipients(incident.labels, self.channels)
        for entry in entries:
            state = IncidentState(Severity(incident.severity), incident.flapping, paged, slack_parent)
            policy = self.rules.escalation_for(state.severity)
            planned = plan(
                TimelineKind(entry.kind), entry.detail, state, policy, self.channels, rule_channel,
                email_to,
            )
            for item in planned:
                row_id = session.scalar(
                    insert(Notification)
                    .values(
                        incident_id=incident.id,
                        channel=item.channel,
                        action=item.action,
                        step=entry.id,
                        target=item.target,
                        text=item.text,
                        priority=item.priority,
                        created_at=now,
                    )
                    .on_conflict_do_nothing(
                        index_elements=["incident_id", "channel", "action", "step"]
                    )
                    .returning(Notification.id)
                )
                if row_id is not None:
                    outbox.put(session, deliver_message(row_id, priority=item.priority), now=now)
                if item.action is Action.TRIGGER:
                    paged = paged or item.channel is Channel.PAGERDUTY
                    slack_parent = slack_parent or item.channel is Channel.SLACK
