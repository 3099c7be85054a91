"""Writing planned notifications into the ledger, inside the incident's own transaction.

Because the rows commit with the timeline entries they announce, a crash can
never leave an event without its notifications; at worst a row waits in
``pending`` until the sweeper hands it to a worker again.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import exists, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from incident.incidents.models import Incident, TimelineEntry, TimelineKind
from incident.notifications import timers
from incident.notifications.models import Action, Channel, Notification
from incident.notifications.planning import Channels, IncidentState, plan
from incident.rules import Rules, Severity


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


def record_notifications(
    session: Session,
    incident: Incident,
    entries: Sequence[TimelineEntry],
    rules: Rules,
    channels: Channels,
    now: datetime,
) -> list[tuple[int, bool]]:
    """Ledger rows for each entry, and the incident's escalation timer moved on.

    Returns (id, priority) for each row this call created.
    """
    timers.on_timeline(session, incident, entries, rules, now)
    created: list[tuple[int, bool]] = []
    paged = _has_trigger(session, incident.id, Channel.PAGERDUTY)
    slack_parent = _has_trigger(session, incident.id, Channel.SLACK)
    rule_channel = rules.slack_channel_for(incident.labels)
    for entry in entries:
        state = IncidentState(Severity(incident.severity), incident.flapping, paged, slack_parent)
        policy = rules.escalation_for(state.severity)
        planned = plan(TimelineKind(entry.kind), entry.detail, state, policy, channels, rule_channel)
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
                created.append((row_id, item.priority))
            if item.action is Action.TRIGGER:
                paged = paged or item.channel is Channel.PAGERDUTY
                slack_parent = slack_parent or item.channel is Channel.SLACK
    return created
