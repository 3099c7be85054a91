"""Maintenance windows: made (with their Alertmanager silence), listed, ended early.

A window with Alertmanager configured is also a silence scheduled for the same
time, so Alertmanager stops notifying about its alerts as well. The silence is
made inside the window's own transaction: when Alertmanager cannot take it,
nothing is stored; when the transaction fails after it, the silence is expired
again.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from incident.incidents.lifecycle import Actor
from incident.integrations.alertmanager import (
    Alertmanager,
    AlertmanagerError,
    SilenceMatcher,
    SilenceRequest,
)
from incident.rules.matchers import Matcher, MatchOp
from incident.windows.models import MaintenanceWindow
from incident.windows.schemas import WindowRequest

log = structlog.get_logger(__name__)

SHOWN_MAX = 500


class WindowNotFound(LookupError):
    """No maintenance window has this id."""


class WindowAlreadyEnded(RuntimeError):
    """The window is over (on time or ended early): there is nothing left to end."""


def silence_matcher(matcher: Matcher) -> SilenceMatcher:
    """Alertmanager's v2 matcher JSON for one of ours: =, !=, =~, !~."""
    return SilenceMatcher(
        matcher.name, matcher.value,
        is_regex=matcher.op in (MatchOp.REGEX, MatchOp.NOT_REGEX),
        is_equal=matcher.op in (MatchOp.EQUAL, MatchOp.REGEX),
    )


def create_window(
    session: Session, request: WindowRequest, actor: Actor, *, now: datetime,
    alertmanager: Alertmanager | None,
) -> MaintenanceWindow:
    """Store the window and schedule its silence; a start in the past means now.

    Raises ``WindowAlreadyEnded`` for an end already past, and ``AlertmanagerError``
    when Alertmanager is configured and did not take the silence: the caller's
    transaction then rolls back and nothing is stored.
    """
    if request.ends_at <= now:  # validated as future a moment ago; the clock moved on
        raise WindowAlreadyEnded("ends_at has already passed")
    window = MaintenanceWindow(
        matchers=list(request.matchers), starts_at=max(request.starts_at, now),
        ends_at=request.ends_at, comment=request.comment, created_by=actor.created_by(),
        created_at=now,
    )
    session.add(window)
    session.flush()
    if alertmanager is not None:
        # A retry after a timeout finds the silence by this, so it is never made twice.
        reference = f"maintenance window #{window.id} ({secrets.token_hex(6)})"
        silence = alertmanager.create(SilenceRequest(
            matchers=[silence_matcher(each) for each in request.parsed_matchers()],
            starts_at=window.starts_at, ends_at=window.ends_at, created_by=window.created_by,
            comment=f"{window.comment} [{reference}]", reference=reference,
        ))
        window.silence_id = silence.id
        session.flush()
    return window


def expire_silence_of(window: MaintenanceWindow, alertmanager: Alertmanager | None) -> None:
    """Best effort, for a window whose transaction failed after its silence was made."""
    if window.silence_id is None or alertmanager is None:
        return
    try:
        alertmanager.expire(window.silence_id)
    except AlertmanagerError as exc:
        log.warning("orphaned maintenance silence not expired", silence_id=window.silence_id,
                    error=str(exc))


def list_windows(session: Session, *, limit: int) -> Sequence[MaintenanceWindow]:
    """Newest first."""
    return session.scalars(
        select(MaintenanceWindow).order_by(MaintenanceWindow.id.desc()).limit(limit)
    ).all()


def end_window(
    session: Session, window_id: int, *, now: datetime, alertmanager: Alertmanager | None
) -> MaintenanceWindow:
    """End a window now (a pending one never starts) and expire its silence.

    Raises ``WindowNotFound``, ``WindowAlreadyEnded``, or ``AlertmanagerError`` when
    the silence could not be expired (the caller rolls back: the window goes on).
    The incidents it held are released by ``suppression.release_ended``.
    """
    window = session.scalars(
        select(MaintenanceWindow).where(MaintenanceWindow.id == window_id).with_for_update()
    ).one_or_none()
    if window is None:
        raise WindowNotFound(window_id)
    if window.ended_at is not None or window.ends_at <= now:
        raise WindowAlreadyEnded(f"maintenance window {window_id} has already ended")
    window.ended_at = now
    session.flush()
    if window.silence_id is not None:
        if alertmanager is None:
            log.warning("maintenance window ended without Alertmanager configured; "
                        "its silence runs to its end", silence_id=window.silence_id)
        else:
            alertmanager.expire(window.silence_id)
    return window
