"""The transactional outbox: task messages written with the change that causes them.

A change and the messages it asks for (deliver this notification, run that
remediation attempt) commit together, so a crash can never keep one without
the other. After the commit the same process sends them at once (the fast
path) and stamps them; a short poll in every worker sends, within seconds,
whatever a crash left unstamped. Both lock the rows they send (the other
skips them), and a message is stamped only after the broker took it, so the
worst a crash can do is send one twice; every consumer claims its row before
acting, so a second copy does nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import BigInteger, DateTime, Identity, Index, String, event, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, Session, mapped_column

from incident import tracing
from incident.db import Base

log = structlog.get_logger(__name__)

# What the poll leaves to the fast path: a message this young is probably
# being sent by the process that committed it.
POLL_AFTER = timedelta(seconds=2)
POLL_BATCH = 500
_PENDING = "incident.outbox.pending"


@dataclass(frozen=True)
class Message:
    """A task message: the task's stable name, its keyword arguments, its queue."""

    task: str
    kwargs: dict[str, Any]
    queue: str
    countdown: float = 0.0
    # Per-message Celery options (soft_time_limit, time_limit; headers that
    # carry the trace context the message was written in).
    options: dict[str, Any] = field(default_factory=dict)


Publish = Callable[[Message], None]


class OutboxMessage(Base):
    __tablename__ = "outbox_messages"
    __table_args__ = (
        Index("ix_outbox_messages_unrelayed", "id", postgresql_where=text("relayed_at IS NULL")),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    task: Mapped[str] = mapped_column(String(128))
    queue: Mapped[str] = mapped_column(String(32))
    kwargs: Mapped[dict[str, Any]] = mapped_column(JSONB)
    options: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    # When the message is due: the relay turns it back into a countdown.
    not_before: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    relayed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    def message(self, now: datetime) -> Message:
        countdown = max(0.0, (self.not_before - now).total_seconds())
        return Message(self.task, dict(self.kwargs), self.queue, countdown, dict(self.options))


def put(session: Session, message: Message, *, now: datetime | None = None) -> None:
    """Add ``message`` to the caller's transaction; it is sent once that commits.

    When tracing, the current trace context goes with it (as message headers),
    so the task it asks for joins the trace of the work that wrote it.
    """
    now = now or datetime.now(UTC)
    options = message.options
    if trace_headers := tracing.context_headers():
        options = {**options, "headers": {**options.get("headers", {}), **trace_headers}}
    row = OutboxMessage(
        task=message.task, queue=message.queue, kwargs=message.kwargs, options=options,
        not_before=now + timedelta(seconds=message.countdown), created_at=now,
    )
    session.add(row)
    session.info.setdefault(_PENDING, []).append(row)


class _Relay:
    """The process's way to the broker, installed once by its context."""

    publish: Publish | None = None


_relay = _Relay()


def install_publisher(publish: Publish | None) -> None:
    _relay.publish = publish


@event.listens_for(Session, "after_commit")
def _send_after_commit(session: Session) -> None:
    rows: list[OutboxMessage] = session.info.pop(_PENDING, [])
    if rows and _relay.publish is not None:
        send_committed(session.get_bind(), rows, _relay.publish)


@event.listens_for(Session, "after_rollback")
def _forget_after_rollback(session: Session) -> None:
    session.info.pop(_PENDING, None)


# Claims (stamps) the committed rows nobody has taken, locking them until the
# stamping transaction ends: the poll skips locked rows, and a process that dies
# before its COMMIT leaves them unstamped for the poll.
_CLAIM = text(
    "UPDATE outbox_messages SET relayed_at = :now WHERE id IN ("
    " SELECT id FROM outbox_messages WHERE id = ANY(:ids) AND relayed_at IS NULL"
    " FOR UPDATE SKIP LOCKED) RETURNING id"
)


def send_committed(bind: Any, rows: list[OutboxMessage], publish: Publish) -> int:
    """The fast path: claim what this process just committed, send it, commit the stamps.

    A stamp commits only after the broker took every message it covers; if a
    send fails, the claims roll back and the poll sends the lot (one duplicate
    at most, which the consumers' own claims absorb).
    """
    by_id = {row.id: row for row in rows}
    try:
        # A session bound to a connection (a test's outer transaction) sends on its engine.
        with getattr(bind, "engine", bind).connect() as conn:
            now = datetime.now(UTC)
            claimed = conn.execute(_CLAIM, {"ids": list(by_id), "now": now}).scalars().all()
            for row_id in sorted(claimed):
                publish(by_id[row_id].message(now))
            conn.commit()
            return len(claimed)
    except Exception as exc:  # the broker or the database is away: the poll sends them
        log.warning("outbox messages left to the poll", error=str(exc))
        return 0


def send_pending(engine: Engine, publish: Publish, *, now: datetime | None = None,
                 older_than: timedelta = POLL_AFTER, limit: int = POLL_BATCH) -> int:
    """The poll: send what no fast path did (its process died after the commit)."""
    now = now or datetime.now(UTC)
    with Session(engine) as session, session.begin():
        rows = session.scalars(
            select(OutboxMessage)
            .where(OutboxMessage.relayed_at.is_(None), OutboxMessage.created_at < now - older_than)
            .order_by(OutboxMessage.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        for row in rows:
            publish(row.message(now))
            row.relayed_at = now
    if rows:
        log.info("outbox messages sent by the poll", count=len(rows))
    return len(rows)
