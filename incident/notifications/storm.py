"""Storm mode: when a Slack channel cannot keep up, one message tells it all.

Slack takes about one message a second per channel. When a Slack row finds
the channel's bucket empty and more than ``BACKLOG`` rows (what the rate
allows in about 10 s) wait for that channel, the channel enters storm mode:

- the first ``KEPT_PARENTS`` SEV1/SEV2 incidents of the storm keep a parent
  message of their own, through the bucket as usual;
- every other row joins the storm: it becomes ``digested`` with target
  ``storm:`` + the channel (the planner writes new rows so, with no delivery
  task of their own; a row already queued joins when its delivery runs), and waits for the next edit of the channel's one
  storm message (posted once, then edited in place with ``chat.update`` at
  most every ``EDIT_EVERY`` seconds). That edit lists its incident, and the
  row is then ``sent`` with external id ``storm:`` + the message's ts. No
  thread reply is posted while the storm lasts;
- once no row has joined for ``QUIET`` seconds, the channel leaves storm mode
  with a closing summary (one post).

The state lives in Redis, shared by every worker. One edit runs at a time per
channel (a lock), and the storm message and the summary are each recorded
before they are posted and looked for (by the metadata they carry) before
being posted again, so two workers, or a worker killed mid-way, never post a
second storm message. The sweeper keeps an edit scheduled for every channel in
a storm, and a row that joined a storm as it ended goes back to its channel.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import redis
import structlog
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from incident import keys
from incident.config import incident_page_url
from incident.db import session_scope
from incident.incidents import outbox
from incident.incidents.models import Incident
from incident.integrations.base import DeliveryError
from incident.integrations.slack_storm import (
    MAX_LISTED, StormIncident, StormView, render_storm, render_storm_summary,
)
from incident.metrics import count
from incident.notifications.latency import observe_rows_delivered
from incident.notifications.ledger import deliver_message
from incident.notifications.models import Channel, DeliveryStatus, Notification
from incident.notifications.ratelimit import TokenBucket

log = structlog.get_logger(__name__)

PREFIX = "storm:"
# Rows waiting for one channel beyond what 1 message/s clears in about 10 s.
BACKLOG = 10
KEPT_PARENTS = 5
# chat.update: Slack allows about one edit a second per message; we edit less often.
EDIT_EVERY = 1.5
QUIET = 10.0
# Rows claimed at once: the listed incidents' rows, read from at most this many.
CLAIM_SCAN = 2000
STALE_CLAIM = timedelta(minutes=2)
# An edit is one Slack call (10 s timeout) and two short transactions: a lock
# left by a worker killed mid-edit holds the next edit back no longer than this.
LOCK_SECONDS = 20
UPDATE_TASK = "incident.notifications.update_slack_storm"

# KEYS[1] the storm's kept parents; ARGV: incident id, how many may be kept.
_KEEP = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('SCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('SADD', KEYS[1], ARGV[1])
  redis.call('EXPIRE', KEYS[1], 86400)
  return 1
end
return 0
"""
# KEYS[1] the channel's storm; ARGV: its id, now. Starts it unless one is on.
_ENTER = """
if redis.call('HEXISTS', KEYS[1], 'id') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'started', ARGV[2], 'last_join', ARGV[2])
return 1
"""
# KEYS[1] the channel's storm; ARGV[1] now. Only a storm still on is touched.
_JOINED = """
if redis.call('HEXISTS', KEYS[1], 'id') == 0 then return 0 end
redis.call('HSET', KEYS[1], 'last_join', ARGV[1])
return 1
"""
# KEYS[1] the lock; ARGV[1] its holder: released only by its holder.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class StormPoster(Protocol):
    def post_message(self, channel: str, text: str, blocks: list[dict[str, Any]], *,
                     ledger_id: int, stamp: str = "") -> str: ...

    def update_message(self, channel: str, ts: str, text: str,
                       blocks: list[dict[str, Any]]) -> None: ...

    def find_posted(self, channel: str, *, ledger_id: int, stamp: str = "",
                    thread_ts: str | None = None, oldest: float | None = None) -> str | None: ...


class RetryStorm(Exception):
    def __init__(self, countdown: float, reason: str) -> None:
        super().__init__(reason)
        self.countdown = countdown


@dataclass(frozen=True)
class Storm:
    id: str
    started_at: datetime
    last_join: float
    ts: str | None
    posting: bool
    closing: bool

    @property
    def stamp(self) -> str:
        return PREFIX + self.id


def is_storm(target: str | None) -> bool:
    return bool(target) and target.startswith(PREFIX)


class SlackStorms:
    def __init__(self, client: redis.Redis, schedule_update: Callable[[str, float], None],
                 *, public_url: str) -> None:
        self._redis = client
        self._schedule_update = schedule_update
        self._public_url = public_url
        self._keep = client.register_script(_KEEP)
        self._unlock = client.register_script(_UNLOCK)
        self._enter = client.register_script(_ENTER)
        self._joined = client.register_script(_JOINED)

    # ------------------------------------------------------------------ state

    def current(self, channel: str) -> Storm | None:
        state = self._redis.hgetall(keys.SLACK_STORM + channel)
        if not state or b"id" not in state:
            return None
        return Storm(
            id=state[b"id"].decode(),
            started_at=datetime.fromtimestamp(float(state[b"started"]), UTC),
            last_join=float(state.get(b"last_join", state[b"started"])),
            ts=state[b"ts"].decode() if b"ts" in state else None,
            posting=b"posting" in state,
            closing=b"closing" in state,
        )

    def active(self, channel: str) -> bool:
        return bool(self._redis.hexists(keys.SLACK_STORM + channel, "id"))

    def channels(self) -> list[str]:
        return sorted(c.decode() for c in self._redis.smembers(keys.SLACK_STORMS))

    def enter(self, channel: str) -> bool:
        """Start the channel's storm, unless one is on (True when this call started it)."""
        if not self._enter(keys=[keys.SLACK_STORM + channel],
                           args=[uuid.uuid4().hex[:12], repr(time.time())]):
            return False
        self._redis.sadd(keys.SLACK_STORMS, channel)
        log.warning("slack channel enters storm mode", channel=channel)
        self.schedule(channel, 0)
        return True

    def keep_parent(self, channel: str, incident_id: int) -> bool:
        """Whether this SEV1/SEV2 incident is one of the storm's few with a parent of its own."""
        return bool(self._keep(keys=[keys.SLACK_STORM_PARENTS + channel],
                               args=[incident_id, KEPT_PARENTS]))

    def diverts(self, channel: str, incident_id: int, action: str, priority: bool) -> str | None:
        """For the planner: the storm target a new Slack row takes, when the channel is
        in storm mode and the row is not a kept SEV1/SEV2 parent; else None. The
        storm's edits, every ``EDIT_EVERY`` seconds while it lasts, pick it up."""
        try:
            if not self.active(channel):
                return None
            if action == "trigger" and priority and self.keep_parent(channel, incident_id):
                return None
        except redis.RedisError:
            return None  # the row is delivered on its own, which needs no storm state
        return PREFIX + channel

    def joined(self, channel: str) -> None:
        """A row joined the storm (committed): note it, and have the next edit show it."""
        self._joined(keys=[keys.SLACK_STORM + channel], args=[repr(time.time())])
        self.schedule(channel, EDIT_EVERY)

    def schedule(self, channel: str, delay: float) -> None:
        # One edit on its way per channel, however many rows join.
        if self._redis.set(keys.SLACK_STORM_SCHEDULED + channel, 1, nx=True, ex=int(delay + 30)):
            self._schedule_update(channel, delay)

    def done(self, channel: str, *, again_in: float = EDIT_EVERY) -> None:
        self._redis.delete(keys.SLACK_STORM_SCHEDULED + channel)
        if self.active(channel) or _waiting(channel):
            self.schedule(channel, again_in)

    def absorb_digest(self, channel: str) -> int:
        """Rows waiting for the channel's digest join its storm message instead."""
        with session_scope() as session:
            rows = session.scalars(
                select(Notification).where(Notification.status == DeliveryStatus.DIGESTED,
                                           Notification.target == channel)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                join(session, row, channel)
        if rows:
            self.joined(channel)
        return len(rows)

    def backlog_exceeded(self, channel: str) -> bool:
        """More Slack rows wait for ``channel`` than its rate clears in about 10 s."""
        with session_scope() as session:
            waiting = session.scalar(
                select(func.count()).select_from(
                    select(Notification.id).where(
                        Notification.channel == Channel.SLACK,
                        Notification.target == channel,
                        Notification.status.in_((DeliveryStatus.PENDING, DeliveryStatus.SENDING,
                                                 DeliveryStatus.DIGESTED)),
                    ).limit(BACKLOG + 1).subquery()
                )
            )
        return int(waiting or 0) > BACKLOG

    # ------------------------------------------------------------------ edits

    def update(self, channel: str, slack: StormPoster, bucket: TokenBucket, *, task_id: str,
               now: datetime | None = None) -> int:
        """Post or edit the channel's storm message with the rows waiting for it, or
        end the storm once it is quiet. Returns how many rows it told; -1 when
        another worker is editing."""
        lock = keys.SLACK_STORM_LOCK + channel
        if not self._redis.set(lock, task_id, nx=True, ex=LOCK_SECONDS):
            return -1
        try:
            return self._update(channel, slack, bucket, task_id, now or datetime.now(UTC))
        finally:
            self._unlock(keys=[lock], args=[task_id])

    def _update(self, channel: str, slack: StormPoster, bucket: TokenBucket, task_id: str,
                now: datetime) -> int:
        storm = self.current(channel)
        if storm is None:
            self._redis.srem(keys.SLACK_STORMS, channel)
            return _back_to_channel(channel)
        claimed = _claim(channel, task_id, now)
        incident_ids = sorted({incident for _, incident in claimed})
        if incident_ids:
            # Rows the planner put straight into the storm count as joining it.
            self._joined(keys=[keys.SLACK_STORM + channel], args=[repr(time.time())])
            self._redis.sadd(keys.SLACK_STORM_INCIDENTS + channel, *incident_ids)
            self._redis.expire(keys.SLACK_STORM_INCIDENTS + channel, 86400)
        if not claimed:
            quiet = storm.closing or time.time() - storm.last_join >= QUIET
            if quiet and storm.ts is not None:
                self._leave(channel, storm, slack, bucket, now)
            elif quiet:
                self._forget(channel)  # nothing ever joined: nothing to tell
            return 0
        rows = [row for row, _ in claimed]
        try:
            text, blocks = render_storm(self._view(channel, storm, first=incident_ids))
            if storm.ts is None:
                ts = self._post_once(channel, storm, slack, bucket, text, blocks, field="ts",
                                     marker="posting", stamp=storm.stamp)
            else:
                ts = storm.ts
                slack.update_message(channel, ts, text, blocks)
        except (DeliveryError, RetryStorm) as exc:
            if isinstance(exc, DeliveryError) and not exc.retryable:
                # The channel or the message is gone, the token refused: no retry helps.
                # Its rows fail, saying why, and the channel leaves storm mode.
                log.error("storm message failed", channel=channel, error=str(exc))
                _fail(rows, str(exc))
                self._forget(channel)
                return len(rows)
            _release(rows, task_id)
            if isinstance(exc, RetryStorm):
                raise
            raise RetryStorm(exc.retry_after or 2.0, str(exc)) from exc
        _mark_sent(rows, PREFIX + ts)
        return len(rows)

    def _post_once(self, channel: str, storm: Storm, slack: StormPoster, bucket: TokenBucket,
                   text: str, blocks: list[dict[str, Any]], *, field: str, marker: str,
                   stamp: str) -> str:
        """Post a message of the storm once: after a crash, find it rather than post again."""
        key = keys.SLACK_STORM + channel
        found = None
        if self._redis.hexists(key, marker):
            oldest = storm.started_at.timestamp() - 60
            found = slack.find_posted(channel, ledger_id=0, stamp=stamp, oldest=oldest)
        if found is None:
            wait = bucket.take(channel, priority=True)
            if wait > 0:
                raise RetryStorm(wait, "Slack channel rate limit")
            self._redis.hset(key, marker, 1)
            found = slack.post_message(channel, text, blocks, ledger_id=0, stamp=stamp)
        self._redis.hset(key, field, found)
        return found

    def _leave(self, channel: str, storm: Storm, slack: StormPoster, bucket: TokenBucket,
               now: datetime) -> None:
        self._redis.hset(keys.SLACK_STORM + channel, "closing", 1)
        view = self._view(channel, storm, first=(), ended_at=now)
        try:
            text, blocks = render_storm(view)
            slack.update_message(channel, storm.ts or "", text, blocks)
            text, blocks = render_storm_summary(view)
            self._post_once(channel, storm, slack, bucket, text, blocks, field="summary",
                            marker="summarising", stamp=storm.stamp + ":summary")
        except DeliveryError as exc:
            if exc.retryable:
                raise RetryStorm(exc.retry_after or 2.0, str(exc)) from exc
            log.error("storm summary failed", channel=channel, error=str(exc))
        self._forget(channel)
        log.warning("slack channel leaves storm mode", channel=channel,
                    incidents=len(view.incidents), still_open=view.open)
        # A row that joined as the storm ended goes back to its channel.
        _back_to_channel(channel)

    def _forget(self, channel: str) -> None:
        self._redis.delete(*(prefix + channel for prefix in (
            keys.SLACK_STORM, keys.SLACK_STORM_INCIDENTS, keys.SLACK_STORM_PARENTS)))
        self._redis.srem(keys.SLACK_STORMS, channel)

    def _view(self, channel: str, storm: Storm, *, first, ended_at: datetime | None = None
              ) -> StormView:
        ids = [int(i) for i in self._redis.smembers(keys.SLACK_STORM_INCIDENTS + channel)]
        with session_scope() as session:
            rows = session.execute(
                select(Incident.id, Incident.title, Incident.severity, Incident.status,
                       Incident.labels["alertname"].astext)
                .where(Incident.id.in_(ids))
            ).all() if ids else []
        incidents = [
            StormIncident(id=r[0], title=r[1], severity=r[2], status=r[3], alertname=r[4] or "",
                          url=incident_page_url(self._public_url, r[0]))
            for r in rows
        ]
        return StormView(started_at=storm.started_at, incidents=incidents,
                         console_url=self._public_url.rstrip("/") + "/", first=tuple(first),
                         ended_at=ended_at)


def join(session: Session, row: Notification, channel: str) -> None:
    """Hand a row (locked, in the caller's transaction) to the channel's storm message."""
    row.status = DeliveryStatus.DIGESTED
    row.target = PREFIX + channel
    row.claimed_by = None
    row.claimed_at = None


def _waiting(channel: str) -> bool:
    with session_scope() as session:
        return session.scalar(
            select(Notification.id).where(Notification.status == DeliveryStatus.DIGESTED,
                                          Notification.target == PREFIX + channel).limit(1)
        ) is not None


def _claim(channel: str, task_id: str, now: datetime) -> list[tuple[int, int]]:
    """The waiting rows of the first ``MAX_LISTED`` incidents: (row id, incident id)."""
    with session_scope() as session:
        rows = session.scalars(
            select(Notification)
            .where(
                Notification.status == DeliveryStatus.DIGESTED,
                Notification.target == PREFIX + channel,
                or_(Notification.claimed_by.is_(None), Notification.claimed_by == task_id,
                    Notification.claimed_at < now - STALE_CLAIM),
            )
            .order_by(Notification.id)
            .limit(CLAIM_SCAN)
            .with_for_update(skip_locked=True)
        ).all()
        incidents: set[int] = set()
        claimed = []
        for row in rows:
            if row.incident_id not in incidents and len(incidents) >= MAX_LISTED:
                continue
            incidents.add(row.incident_id)
            row.claimed_by = task_id
            row.claimed_at = now
            row.attempts += 1
            claimed.append((row.id, row.incident_id))
        return claimed


def _locked(session: Session, ids: list[int]) -> list[Notification]:
    return [
        row for row in session.scalars(
            select(Notification).where(Notification.id.in_(ids)).with_for_update()
        )
        if row.status == DeliveryStatus.DIGESTED
    ]


def _mark_sent(ids: list[int], external_id: str) -> None:
    if not ids:
        return
    with session_scope() as session:
        sent_at = datetime.now(UTC)
        rows = _locked(session, ids)
        for row in rows:
            count("incident_notifications", channel=row.channel, outcome="sent")
            row.status = DeliveryStatus.SENT
            row.external_id = external_id
            row.sent_at = sent_at
            row.claimed_by = None
            row.last_error = None
        observe_rows_delivered(session, rows)


def _release(ids: list[int], task_id: str) -> None:
    if not ids:
        return
    with session_scope() as session:
        for row in _locked(session, ids):
            if row.claimed_by == task_id:
                row.claimed_by = None
                row.claimed_at = None


def _fail(ids: list[int], error: str) -> None:
    with session_scope() as session:
        for row in _locked(session, ids):
            count("incident_notifications", channel=row.channel, outcome="failed")
            row.status = DeliveryStatus.FAILED
            row.last_error = error


def _back_to_channel(channel: str) -> int:
    """Rows left waiting for a storm that is over: each is delivered on its own again."""
    now = datetime.now(UTC)
    with session_scope() as session:
        rows = session.scalars(
            select(Notification).where(Notification.status == DeliveryStatus.DIGESTED,
                                       Notification.target == PREFIX + channel)
            .with_for_update(skip_locked=True)
        ).all()
        for row in rows:
            row.status = DeliveryStatus.PENDING
            row.target = channel
            row.claimed_by = None
            row.claimed_at = None
            outbox.put(session, deliver_message(row.id, priority=row.priority), now=now)
        return len(rows)
