"""Coalescing Slack messages that a storm would otherwise queue behind the rate limit.

When a channel's bucket is empty, thread replies and SEV3/SEV4 openings are
not held back one by one: their ledger ids gather in a Redis list, and one
digest message per channel, posted when a token frees up, carries them all.
SEV1/SEV2 openings never wait here; they retry for the next token instead.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import redis
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from incident.db import session_scope
from incident.metrics import count
from incident.notifications.models import DeliveryStatus, Notification

DIGEST_DELAY_SECONDS = 3.0
MAX_LINES = 40
_LIST = "incident:digest:"
_SCHEDULED = "incident:digest-scheduled:"


class SlackDigests:
    def __init__(self, client: redis.Redis, schedule_flush: Callable[[str, float], None]) -> None:
        self._redis = client
        self._schedule_flush = schedule_flush

    def add(self, channel: str, notification_id: int) -> None:
        self._redis.rpush(_LIST + channel, notification_id)
        self.schedule(channel)

    def schedule(self, channel: str) -> None:
        # One pending flush per channel, however many messages join the digest.
        if self._redis.set(_SCHEDULED + channel, 1, nx=True, ex=120):
            self._schedule_flush(channel, DIGEST_DELAY_SECONDS)

    def take(self, channel: str) -> list[int]:
        raw = self._redis.lpop(_LIST + channel, MAX_LINES) or []
        return [int(x) for x in raw]

    def put_back(self, channel: str, ids: list[int]) -> None:
        if ids:
            self._redis.lpush(_LIST + channel, *reversed(ids))

    def done(self, channel: str) -> None:
        self._redis.delete(_SCHEDULED + channel)
        if self._redis.llen(_LIST + channel):
            self.schedule(channel)


def digest_lines(ids: list[int]) -> list[tuple[int, str, str]]:
    """Each coalesced row still waiting, as (id, line, stamp)."""
    with session_scope() as session:
        rows = session.scalars(
            select(Notification)
            .where(Notification.id.in_(ids), Notification.status == DeliveryStatus.SENDING)
            .options(selectinload(Notification.incident))
            .order_by(Notification.id)
        ).all()
        return [
            (
                row.id,
                f"[{row.incident.severity}] {row.incident.title}: {row.text or row.action}",
                row.created_at.isoformat(),
            )
            for row in rows
        ]


def mark_digested(ids: list[int], ts: str) -> None:
    with session_scope() as session:
        for row in session.scalars(
            select(Notification).where(Notification.id.in_(ids)).with_for_update()
        ):
            if row.status == DeliveryStatus.SENDING:
                count("incident_notifications", channel=row.channel, outcome="sent")
                row.status = DeliveryStatus.SENT
                row.external_id = f"digest:{ts}"
                row.sent_at = datetime.now(UTC)
