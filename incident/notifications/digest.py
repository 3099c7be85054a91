"""Coalescing Slack messages that a storm would otherwise queue behind the rate limit.

When a channel's bucket is empty, thread replies and SEV3/SEV4 openings are
not held back one by one: their ledger rows become ``digested``, and one
digest message per channel, posted when a token frees up, carries up to
``MAX_LINES`` of them. SEV1/SEV2 openings never wait here; they retry for the
next token instead.

Email reuses the same digests, keyed ``mail:`` + the recipients: a storm's
SEV3/SEV4 mail beyond ``EMAIL_BURST`` messages (refilled at ``EMAIL_RATE``
a second) waits ``INCIDENT_EMAIL_DIGEST_SECONDS`` (3 minutes by default) and
goes out as one message per recipient list. SEV1/SEV2 mail never waits.

The ledger is the digest's only record: a flush claims its rows in
PostgreSQL before posting, and the message names every row it covers. A flush
killed after Slack stored its message is redelivered (or its claim goes
stale), finds that message by one look at the channel's history, and marks
the rows it covers sent: they are never posted again, row by row or otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis
from sqlalchemy import or_, select
from sqlalchemy.orm import Session, selectinload

from incident import keys
from incident.db import session_scope
from incident.integrations.base import DeliveryError, SlackPoster
from incident.integrations.email import DIGEST_KEY_PREFIX
from incident.metrics import count
from incident.notifications.latency import observe_rows_delivered
from incident.notifications.models import DeliveryStatus, Notification

DIGEST_DELAY_SECONDS = 3.0
MAX_LINES = 40
# A claim older than this belongs to a flush that died.
STALE_CLAIM = timedelta(minutes=2)
EXTERNAL_PREFIX = "digest:"
FLUSH_TASK = "incident.notifications.flush_slack_digest"
MAIL_PREFIX = DIGEST_KEY_PREFIX
EMAIL_BURST = 4
EMAIL_RATE = 1 / 60


class RetryFlush(Exception):
    def __init__(self, countdown: float | None, reason: str) -> None:
        super().__init__(reason)
        self.countdown = countdown


@dataclass(frozen=True)
class _Line:
    id: int
    text: str
    stamp: str
    # Claimed before by a flush that may have posted it.
    recovering: bool
    claimed_at: datetime


class SlackDigests:
    def __init__(
        self, client: redis.Redis, schedule_flush: Callable[[str, float], None],
        *, mail_delay: float = DIGEST_DELAY_SECONDS,
    ) -> None:
        self._redis = client
        self._schedule_flush = schedule_flush
        self._mail_delay = mail_delay

    def add(self, channel: str, notification_id: int, *, task_id: str) -> bool:
        """Hand a row this task has claimed to the channel's next digest."""
        with session_scope() as session:
            row = session.get(Notification, notification_id, with_for_update=True)
            if row is None or row.status != DeliveryStatus.SENDING or row.claimed_by != task_id:
                return False
            row.status = DeliveryStatus.DIGESTED
            row.target = channel
            row.claimed_by = None
            row.claimed_at = None
        self.schedule(channel)
        return True

    def schedule(self, channel: str) -> None:
        # One pending flush per channel, however many rows join the digest.
        delay = self._mail_delay if is_mail(channel) else DIGEST_DELAY_SECONDS
        if self._redis.set(keys.SLACK_DIGEST_SCHEDULED + channel, 1, nx=True,
                           ex=int(max(120, delay + 60))):
            self._schedule_flush(channel, delay)

    def later(self, channel: str, delay: float) -> None:
        """Have a fresh flush come back in ``delay`` seconds (for a token, say)."""
        self._redis.delete(keys.SLACK_DIGEST_SCHEDULED + channel)
        if self._redis.set(keys.SLACK_DIGEST_SCHEDULED + channel, 1, nx=True,
                           ex=int(max(120, delay + 60))):
            self._schedule_flush(channel, delay)

    def done(self, channel: str) -> None:
        self._redis.delete(keys.SLACK_DIGEST_SCHEDULED + channel)
        if waiting(channel):
            self.schedule(channel)

    def flush(self, channel: str, slack: SlackPoster, *, task_id: str,
              now: datetime | None = None) -> int:
        """Post one digest of the channel's waiting rows; returns how many rows it told."""
        now = now or datetime.now(UTC)
        lines = _claim(channel, task_id, now)
        if not lines:
            return 0
        told: dict[int, str] = {}
        recovering = [line for line in lines if line.recovering]
        try:
            if recovering:
                oldest = min(line.claimed_at for line in recovering) - timedelta(minutes=1)
                told = slack.find_digested(
                    channel, rows=[(line.id, line.stamp) for line in recovering],
                    oldest=oldest.timestamp(),
                )
            todo = [line for line in lines if line.id not in told]
            if todo:
                ts = slack.post_digest(
                    channel, [line.text for line in todo], ledger_id=todo[0].id,
                    covers=[(line.id, line.stamp) for line in todo],
                )
                told.update((line.id, ts) for line in todo)
        except DeliveryError as exc:
            _mark_sent(told)
            rest = [line.id for line in lines if line.id not in told]
            if exc.retryable:
                if not exc.maybe_delivered:
                    _release(rest, task_id)
                # Else the claim stays ours: the retry, under this task id, looks first.
                raise RetryFlush(exc.retry_after, str(exc)) from exc
            _fail(rest, str(exc))
            return len(told)
        _mark_sent(told)
        return len(told)


def is_mail(channel: str) -> bool:
    """Whether a digest key names mail recipients rather than a Slack channel."""
    return channel.startswith(MAIL_PREFIX)


def waiting(channel: str) -> bool:
    """Whether any row still waits for the channel's digest."""
    with session_scope() as session:
        return session.scalar(
            select(Notification.id)
            .where(Notification.status == DeliveryStatus.DIGESTED, Notification.target == channel)
            .limit(1)
        ) is not None


def waiting_channels(older_than: datetime) -> list[str]:
    """Channels with rows waiting for a digest since before ``older_than``."""
    with session_scope() as session:
        return list(session.scalars(
            select(Notification.target)
            .where(Notification.status == DeliveryStatus.DIGESTED,
                   Notification.created_at < older_than)
            .distinct()
        ).all())


def _claim(channel: str, task_id: str, now: datetime) -> list[_Line]:
    with session_scope() as session:
        rows = session.scalars(
            select(Notification)
            .where(
                Notification.status == DeliveryStatus.DIGESTED,
                Notification.target == channel,
                or_(
                    Notification.claimed_by.is_(None),
                    Notification.claimed_by == task_id,
                    Notification.claimed_at < now - STALE_CLAIM,
                ),
            )
            .order_by(Notification.id)
            .limit(MAX_LINES)
            .options(selectinload(Notification.incident))
            .with_for_update(of=Notification, skip_locked=True)
        ).all()
        lines = []
        for row in rows:
            lines.append(_Line(
                id=row.id,
                text=f"[{row.incident.severity}] {row.incident.title}: {row.text or row.action}",
                stamp=row.created_at.isoformat(),
                recovering=row.claimed_by is not None,
                claimed_at=row.claimed_at or now,
            ))
            row.claimed_by = task_id
            row.claimed_at = now
            row.attempts += 1
        return lines


def _waiting_rows(session: Session, ids: Iterable[int]) -> list[Notification]:
    """The rows among ``ids`` still waiting for their digest, locked."""
    return [
        row for row in session.scalars(
            select(Notification).where(Notification.id.in_(list(ids))).with_for_update()
        )
        if row.status == DeliveryStatus.DIGESTED
    ]


def _mark_sent(told: dict[int, str]) -> None:
    if not told:
        return
    with session_scope() as session:
        rows = _waiting_rows(session, told)
        for row in rows:
            count("incident_notifications", channel=row.channel, outcome="sent")
            row.status = DeliveryStatus.SENT
            row.external_id = EXTERNAL_PREFIX + told[row.id]
            row.sent_at = datetime.now(UTC)
            row.last_error = None
        observe_rows_delivered(session, rows)


def _release(ids: list[int], task_id: str) -> None:
    with session_scope() as session:
        for row in _waiting_rows(session, ids):
            if row.claimed_by == task_id:
                row.claimed_by = None
                row.claimed_at = None


def _fail(ids: list[int], error: str) -> None:
    with session_scope() as session:
        for row in _waiting_rows(session, ids):
            count("incident_notifications", channel=row.channel, outcome="failed")
            row.status = DeliveryStatus.FAILED
            row.last_error = error
