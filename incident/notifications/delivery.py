"""Sending one ledger row: claim it, send it, record what happened.

The claim and the record are short transactions of their own; the request to
Slack or PagerDuty happens between them, holding no lock. A worker killed
after sending but before recording leaves the row ``sending`` under its task
id. When the message is redelivered to the same task id, or the claim goes
stale, the next attempt looks for the message it may already have posted
(Slack: by the ledger id carried in the message metadata; PagerDuty: the
dedup key makes a repeated event harmless) instead of posting again; email
sends again with the same Message-ID, which mail clients show once. A row
that joins a digest leaves this path: digest.py owns it from then on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from incident.db import session_scope
from incident.incidents.models import Incident, TimelineEntry, TimelineKind
from incident.metrics import count
from incident.integrations.base import DeliveryError, IncidentView
from incident.integrations.email import message_id
from incident.notifications.digest import EXTERNAL_PREFIX, MAIL_PREFIX
from incident.notifications.latency import observe_delivered
from incident.notifications.models import Action, Channel, DeliveryStatus, Notification
from incident.notifications.notifiers import Notifiers
from incident.notifications.planning import EDITS_PARENT
from incident.notifications import storm
from incident.notifications.views import incident_view

log = structlog.get_logger(__name__)

STALE_CLAIM = timedelta(minutes=2)
DIGEST_PREFIX = EXTERNAL_PREFIX


class Outcome(StrEnum):
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"
    COALESCED = "coalesced"


class RetryLater(Exception):
    """Try again after ``countdown`` seconds (0: the task's own backoff).

    ``counts`` is False for waits that are not failures (the channel's rate
    limit, a parent message still on its way): those must not use up the
    retries a real failure is allowed.
    """

    def __init__(self, countdown: float, reason: str, *, counts: bool = True) -> None:
        super().__init__(reason)
        self.countdown = countdown
        self.reason = reason
        self.counts = counts


@dataclass(frozen=True)
class Claim:
    id: int
    channel: Channel
    action: Action
    target: str | None
    destination: str
    text: str | None
    priority: bool
    recovering: bool
    claimed_at: datetime
    kind: TimelineKind
    parent_ts: str | None
    view: IncidentView
    # The row's creation time: with its id, what identifies its Slack message.
    stamp: str = ""
    # The incident's first mail (ledger id, stamp): later mail replies to it.
    email_root: tuple[int, str] | None = None


def deliver(
    notification_id: int, *, task_id: str, notifiers: Notifiers, now: datetime | None = None
) -> Outcome:
    now = now or datetime.now(UTC)
    with session_scope() as session:
        claim = _claim(session, notification_id, task_id, now, notifiers)
    if isinstance(claim, _Joined):
        notifiers.require_storms().joined(claim.channel)
        count("incident_notifications", channel=Channel.SLACK, outcome="coalesced")
        return Outcome.COALESCED
    if claim is None:
        return Outcome.SKIPPED
    log.debug("delivering", notification_id=claim.id, channel=claim.channel, action=claim.action)
    try:
        external_id = _send(claim, notifiers)
    except _Stormed as stormed:
        if _join_storm(claim.id, task_id, stormed.channel):
            notifiers.require_storms().joined(stormed.channel)
        count("incident_notifications", channel=claim.channel, outcome="coalesced")
        return Outcome.COALESCED
    except _Coalesced as coalesced:
        notifiers.digests.add(coalesced.channel, claim.id, task_id=task_id)
        count("incident_notifications", channel=claim.channel, outcome="coalesced")
        return Outcome.COALESCED
    except RetryLater:
        _release(claim.id, task_id, error=None)
        raise
    except DeliveryError as exc:
        if exc.retryable:
            count("incident_notifications", channel=claim.channel, outcome="retried")
            if exc.maybe_delivered:
                # Keep the claim: the retry runs under this task id, finds the
                # row still ``sending`` as its own, and looks before sending.
                _note_error(claim.id, str(exc))
            else:
                _release(claim.id, task_id, error=str(exc))
            raise RetryLater(exc.retry_after or 0, str(exc)) from exc
        mark_failed(claim.id, str(exc))
        log.error("notification failed", notification_id=claim.id, error=str(exc))
        return Outcome.FAILED
    with session_scope() as session:
        _record_sent(session, claim.id, task_id, external_id, severity=claim.view.severity)
    count("incident_notifications", channel=claim.channel, outcome="sent")
    return Outcome.SENT


class _Coalesced(Exception):
    def __init__(self, channel: str) -> None:
        super().__init__(channel)
        self.channel = channel


class _Stormed(_Coalesced):
    """The channel is in storm mode: the row joins its storm message."""


@dataclass(frozen=True)
class _Joined:
    channel: str


def _claim(
    session: Session, notification_id: int, task_id: str, now: datetime, notifiers: Notifiers
) -> Claim | _Joined | None:
    row = session.get(Notification, notification_id, with_for_update=True)
    if row is None or row.status in (DeliveryStatus.SENT, DeliveryStatus.FAILED):
        return None
    if row.status == DeliveryStatus.DIGESTED:
        return None  # a digest or a storm message owns it
    recovering = row.status == DeliveryStatus.SENDING
    if recovering and row.claimed_by != task_id and row.claimed_at > now - STALE_CLAIM:
        return None  # another worker has it right now
    if row.channel == Channel.SLACK and not recovering and notifiers.storms is not None:
        channel = row.target or notifiers.default_slack_channel
        storms = notifiers.storms
        if storms.active(channel) and not (
            row.action == Action.TRIGGER and row.priority
            and storms.keep_parent(channel, row.incident_id)
        ):
            storm.join(session, row, channel)
            return _Joined(channel)
    public_url = notifiers.public_url
    parent_ts = None
    if row.channel == Channel.SLACK and row.action != Action.TRIGGER:
        parent = _slack_parent(session, row.incident_id, row.destination)
        if parent is None or parent.status in (DeliveryStatus.PENDING, DeliveryStatus.SENDING):
            raise RetryLater(2, "the Slack parent message is not posted yet", counts=False)
        if parent.status == DeliveryStatus.FAILED:
            row.status = DeliveryStatus.FAILED
            row.last_error = "the Slack parent message could not be posted"
            return None
        parent_ts = parent.external_id
    email_root = _email_root(session, row.incident_id) if row.channel == Channel.EMAIL else None
    incident = session.scalars(
        select(Incident).where(Incident.id == row.incident_id).options(selectinload(Incident.alerts))
    ).one()
    kind = TimelineKind(session.scalar(select(TimelineEntry.kind).where(TimelineEntry.id == row.step)))
    claimed_at = row.claimed_at if recovering else now
    row.status = DeliveryStatus.SENDING
    row.claimed_by = task_id
    row.claimed_at = now
    row.attempts += 1
    return Claim(
        id=row.id, channel=Channel(row.channel), action=Action(row.action), target=row.target,
        destination=row.destination, text=row.text, priority=row.priority,
        recovering=recovering, claimed_at=claimed_at,
        kind=kind, parent_ts=parent_ts, view=incident_view(incident, public_url),
        stamp=row.created_at.isoformat(), email_root=email_root,
    )


def _email_root(session: Session, incident_id: int) -> tuple[int, str] | None:
    first = session.execute(
        select(Notification.id, Notification.created_at).where(
            Notification.incident_id == incident_id, Notification.channel == Channel.EMAIL,
        ).order_by(Notification.id).limit(1)
    ).one_or_none()
    return (first.id, first.created_at.isoformat()) if first else None


def _slack_parent(session: Session, incident_id: int, destination: str) -> Notification | None:
    """The incident's parent message in the channel this row goes to."""
    return session.scalars(
        select(Notification).where(
            Notification.incident_id == incident_id,
            Notification.channel == Channel.SLACK,
            Notification.action == Action.TRIGGER,
            Notification.destination == destination,
        ).order_by(Notification.id).limit(1)
    ).one_or_none()


def _send(claim: Claim, notifiers: Notifiers) -> str:
    if claim.channel is Channel.PAGERDUTY:
        return _send_pagerduty(claim, notifiers)
    if claim.channel is Channel.EMAIL:
        return _send_email(claim, notifiers)
    if claim.channel is Channel.CONSOLE:
        if claim.target and claim.target.startswith(MAIL_PREFIX):
            notifiers.console.send_mail(
                claim.target.removeprefix(MAIL_PREFIX), claim.view, claim.text or "",
                ledger_id=claim.id,
            )
        if claim.action is Action.TRIGGER:
            return notifiers.console.post_parent("console", claim.view, ledger_id=claim.id)
        return notifiers.console.reply(
            "console", claim.view.key, f"{claim.view.title}: {claim.text}", ledger_id=claim.id
        )
    return _send_slack(claim, notifiers)


def _send_pagerduty(claim: Claim, notifiers: Notifiers) -> str:
    # The service the incident was routed to when it opened: its key is read
    # now, from the variable the route named, so it never sits in the ledger.
    pager = notifiers.pager_for(claim.destination)
    key = claim.view.key
    if claim.action in (Action.TRIGGER, Action.ESCALATE):
        # Repeating a trigger is safe: PagerDuty folds it into the same alert.
        return pager.trigger(claim.view, severity=claim.target or "critical")
    if claim.action is Action.ACKNOWLEDGE:
        pager.acknowledge(key)
    elif claim.action is Action.RESOLVE:
        pager.resolve(key)
    return key


def _send_email(claim: Claim, notifiers: Notifiers) -> str:
    mailer = notifiers.require_mailer()
    recipients = claim.target or ""
    # SEV1/SEV2 mail never waits; in a storm the rest joins one digest per recipient list.
    bucket = notifiers.email_bucket
    if not claim.priority and bucket is not None and bucket.take(MAIL_PREFIX + recipients) > 0:
        raise _Coalesced(MAIL_PREFIX + recipients)
    root = message_id(*claim.email_root, mailer.domain) if claim.email_root else None
    return mailer.send(
        [a for a in recipients.split(",") if a], claim.view, claim.text or "",
        ledger_id=claim.id, stamp=claim.stamp, thread_root=root,
    )


def _send_slack(claim: Claim, notifiers: Notifiers) -> str:
    slack = notifiers.require_slack()
    channel = claim.target or notifiers.default_slack_channel
    parent_ts = claim.parent_ts or ""
    text = claim.text or ""
    if parent_ts.startswith(storm.PREFIX):
        # Its parent is a storm message: the reply names its incident.
        text = f"{claim.view.title}: {text}"
    if claim.action is not Action.TRIGGER and not parent_ts.startswith(_SHARED) and (
        claim.kind in EDITS_PARENT or claim.action in (Action.ACKNOWLEDGE, Action.RESOLVE)
    ):
        # An edit is not a post: Slack limits chat.update apart from the
        # channel's one message a second, so the parent always shows the
        # current state even when the thread reply below joins a digest.
        # Editing twice after a crash is harmless.
        slack.update_parent(channel, parent_ts, claim.view)
    if claim.recovering:
        oldest = (claim.claimed_at - timedelta(minutes=1)).timestamp()
        found = slack.find_posted(
            channel, ledger_id=claim.id, stamp=claim.stamp,
            thread_ts=_thread_of(claim.parent_ts), oldest=oldest,
        )
        if found is not None:
            log.info("already posted before a crash; not posting again", notification_id=claim.id)
            return found
    wait = notifiers.slack_bucket.take(channel, priority=claim.priority)
    storms = notifiers.storms
    if wait > 0 and storms is not None and (
        storms.active(channel) or storms.backlog_exceeded(channel)
    ):
        storms.enter(channel)
        kept = claim.action is Action.TRIGGER and claim.priority and storms.keep_parent(
            channel, claim.view.id
        )
        if not kept:
            raise _Stormed(channel)
    if wait > 0:
        if claim.priority:
            # Pages never join a digest, and the bucket keeps a token back for
            # them: they come back for it without using up their retries.
            raise RetryLater(wait, "Slack channel rate limit", counts=False)
        raise _Coalesced(channel)
    if claim.action is Action.TRIGGER:
        return slack.post_parent(channel, claim.view, ledger_id=claim.id, stamp=claim.stamp)
    return slack.reply(
        channel, _thread_of(parent_ts), text, ledger_id=claim.id, stamp=claim.stamp
    )


# External ids of messages that stand for many rows: a digest, a storm message.
_SHARED = (DIGEST_PREFIX, storm.PREFIX)


def _thread_of(parent_ts: str | None) -> str | None:
    if parent_ts is None:
        return None
    for prefix in _SHARED:
        parent_ts = parent_ts.removeprefix(prefix)
    return parent_ts


def _join_storm(notification_id: int, task_id: str, channel: str) -> bool:
    """Hand a row this task has claimed to the channel's storm message."""
    with session_scope() as session:
        row = session.get(Notification, notification_id, with_for_update=True)
        if row is None or row.status != DeliveryStatus.SENDING or row.claimed_by != task_id:
            return False
        storm.join(session, row, channel)
        return True


def _release(notification_id: int, task_id: str, *, error: str | None) -> None:
    """Hand the row back for the retry, unless another task has since taken it."""
    with session_scope() as session:
        row = session.get(Notification, notification_id, with_for_update=True)
        if row is not None and row.claimed_by == task_id and row.status == DeliveryStatus.SENDING:
            row.status = DeliveryStatus.PENDING
            row.claimed_by = None
            if error:
                row.last_error = error


def _note_error(notification_id: int, error: str) -> None:
    with session_scope() as session:
        row = session.get(Notification, notification_id, with_for_update=True)
        if row is not None:
            row.last_error = error


def mark_failed(notification_id: int, error: str) -> None:
    with session_scope() as session:
        row = session.get(Notification, notification_id, with_for_update=True)
        if row is not None and row.status != DeliveryStatus.SENT:
            if row.status != DeliveryStatus.FAILED:
                count("incident_notifications", channel=row.channel, outcome="failed")
            row.status = DeliveryStatus.FAILED
            row.last_error = error


def _record_sent(session: Session, notification_id: int, task_id: str, external_id: str,
                 *, severity: str) -> None:
    row = session.get(Notification, notification_id, with_for_update=True)
    if row is None or row.status == DeliveryStatus.SENT:
        return
    row.status = DeliveryStatus.SENT
    row.external_id = external_id
    row.sent_at = datetime.now(UTC)
    row.last_error = None
    observe_delivered(session, row, severity)

