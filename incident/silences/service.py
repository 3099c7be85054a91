"""Silencing an incident's alerts in Alertmanager, and lifting the silences again.

Alertmanager is never called inside a database transaction. A silence is
first reserved: a row with a fresh ``reference`` is committed. Then
Alertmanager is asked, with the reference in the silence's comment. Then, in
a short transaction holding the incident's row lock, the silence id is
recorded and the lifecycle writes the ``silenced`` entry. A call that stops
between those steps leaves a reserved row whose silence can still be found
by its reference: a retry with the same reference finds it rather than making
a second one, and ``unsilence`` finds and expires it too.

A resolved incident can be silenced: its alerts may fire again (a flapping
check, a restart loop) and whoever silences it means to hear nothing more.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import Engine, delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from incident.config import incident_page_url
from incident.db import session_scope
from incident.incidents.events import EventBus
from incident.incidents.lifecycle import Actor, Lifecycle
from incident.incidents.models import Incident
from incident.incidents.store import IncidentNotFound
from incident.integrations.alertmanager import (
    Alertmanager,
    AlertmanagerRefused,
    SilenceMatcher,
    SilenceRequest,
)
from incident.rules.durations import format_duration
from incident.rules.matchers import Matcher, MatcherError, MatchOp
from incident.silences.models import IncidentSilence

__all__ = [
    "MAX_DURATION",
    "MIN_DURATION",
    "SILENCE_TASK",
    "IncidentNotFound",
    "NothingToSilence",
    "Silences",
    "SilencingNotConfigured",
    "check_duration",
    "created_by",
]

log = structlog.get_logger(__name__)

MIN_DURATION = timedelta(minutes=1)
MAX_DURATION = timedelta(days=7)
DEFAULT_DURATION = timedelta(hours=1)
REFERENCE_PREFIX = "incident-silence:"
# The worker's door onto ``Silences.silence`` for callers outside the API (Slack's menu).
SILENCE_TASK = "incident.silences.silence"


class SilencingNotConfigured(RuntimeError):
    def __init__(self) -> None:
        super().__init__(
            "silencing needs Alertmanager: set INCIDENT_ALERTMANAGER_URL "
            "(comma-separated for an HA cluster)"
        )


class NothingToSilence(ValueError):
    """The incident's group has no label with a value, so a silence would match everything."""


def check_duration(duration: timedelta) -> timedelta:
    if not MIN_DURATION <= duration <= MAX_DURATION:
        raise ValueError(
            f"duration must be from {format_duration(MIN_DURATION)} to "
            f"{format_duration(MAX_DURATION)}, got {format_duration(duration)}"
        )
    return duration


def created_by(actor: Actor) -> str:
    """``slack:U024BE7LH (alice)``, ``web:alice@example.com``, ``api``."""
    return actor.created_by()


def group_matchers(group_labels: Mapping[str, str]) -> list[SilenceMatcher]:
    """One ``=`` matcher per group label: exactly the alerts of the incident's group."""
    if not any(group_labels.values()):
        raise NothingToSilence(
            "the incident's group has no label with a value to match (Alertmanager's "
            "group_by is empty), so its silence would silence every alert"
        )
    return [SilenceMatcher(name, value) for name, value in sorted(group_labels.items())]


def matcher_text(matcher: SilenceMatcher) -> str:
    """``service="api"``, in Alertmanager's matcher syntax; a label name outside the
    classic charset (Alertmanager 0.27's UTF-8 names) is quoted: ``"service.name"="api"``."""
    try:
        return str(Matcher(matcher.name, MatchOp.EQUAL, matcher.value))
    except MatcherError:
        return f"{json.dumps(matcher.name, ensure_ascii=False)}=" \
               f"{json.dumps(matcher.value, ensure_ascii=False)}"


def new_reference() -> str:
    return REFERENCE_PREFIX + uuid.uuid4().hex


@dataclass(frozen=True)
class _Reserved:
    row_id: int
    request: SilenceRequest
    # An earlier call with this reference got this far: Alertmanager may already have it.
    again: bool


class Silences:
    def __init__(
        self, engine: Engine, alertmanager: Alertmanager | None, events: EventBus,
        public_url: str,
    ) -> None:
        self.engine = engine
        self.alertmanager = alertmanager
        self.events = events
        self.public_url = public_url.rstrip("/")

    def silence(
        self, incident_id: int, actor: Actor, duration: timedelta = DEFAULT_DURATION,
        comment: str | None = None, *, reference: str | None = None,
    ) -> None:
        """Silence the incident's group in Alertmanager for ``duration`` (1m to 7d).

        ``reference``: the same for every retry of one request (a task's id,
        say), so that the retries make one silence between them.
        """
        check_duration(duration)
        alertmanager = self._require_alertmanager()
        reserved = self._reserve(incident_id, actor, duration, comment,
                                 reference or new_reference())
        if reserved is None:
            return
        found = alertmanager.find(reserved.request.reference) if reserved.again else None
        try:
            made = found or alertmanager.create(reserved.request)
        except AlertmanagerRefused:
            # Refused outright: nothing was made, so nothing is left to find.
            with session_scope(self.engine) as session:
                session.execute(delete(IncidentSilence).where(IncidentSilence.id == reserved.row_id))
            raise
        self._confirm(incident_id, reserved, made.id, actor, duration, comment)

    def unsilence(self, incident_id: int, actor: Actor) -> int:
        """Expire the incident's silences that have not ended; how many there were."""
        alertmanager = self._require_alertmanager()
        now = datetime.now(UTC)
        with session_scope(self.engine) as session:
            _require_incident(session, incident_id)
            unended = session.execute(
                select(IncidentSilence.id, IncidentSilence.silence_id, IncidentSilence.reference)
                .where(IncidentSilence.incident_id == incident_id,
                       IncidentSilence.expired_at.is_(None), IncidentSilence.ends_at > now)
                .order_by(IncidentSilence.id)
            ).all()
        done: list[tuple[int, str | None]] = []
        try:
            for row_id, recorded, reference in unended:
                silence_id = recorded
                if silence_id is None:
                    # Reserved, never confirmed: Alertmanager may have it all the same.
                    found = alertmanager.find(reference)
                    silence_id = found.id if found else None
                if silence_id is not None:
                    alertmanager.expire(silence_id)
                done.append((row_id, silence_id))
        finally:
            # What was expired stays recorded even when a later one could not be.
            expired = self._record_expired(incident_id, actor, done)
        return expired

    # Within.

    def _require_alertmanager(self) -> Alertmanager:
        if self.alertmanager is None:
            raise SilencingNotConfigured()
        return self.alertmanager

    def _reserve(
        self, incident_id: int, actor: Actor, duration: timedelta, comment: str | None,
        reference: str,
    ) -> _Reserved | None:
        """The row for this request, committed before Alertmanager is asked; None when an
        earlier call with the same reference already finished."""
        with session_scope(self.engine) as session:
            incident = _require_incident(session, incident_id)
            matchers = group_matchers(incident.group_labels or {})
            now = datetime.now(UTC)
            row_id = session.scalar(
                insert(IncidentSilence)
                .values(
                    incident_id=incident_id, reference=reference,
                    matchers=[matcher_text(matcher) for matcher in matchers],
                    starts_at=now, ends_at=now + duration, created_by=created_by(actor),
                )
                .on_conflict_do_nothing(index_elements=["reference"])
                .returning(IncidentSilence.id)
            )
            row = session.scalars(
                select(IncidentSilence).where(IncidentSilence.reference == reference)
            ).one()
            if row.incident_id != incident_id:
                raise ValueError(f"reference {reference!r} belongs to another incident")
            if row.silence_id is not None or row.expired_at is not None:
                # Made by an earlier try, or overtaken by an unsilence since.
                return None
            request = SilenceRequest(
                matchers=matchers,
                starts_at=row.starts_at, ends_at=row.ends_at, created_by=row.created_by,
                comment=self._comment(incident_id, comment, reference), reference=reference,
            )
            return _Reserved(row.id, request, again=row_id is None)

    def _comment(self, incident_id: int, comment: str | None, reference: str) -> str:
        said = f"{comment.strip()} - " if comment and comment.strip() else ""
        return f"{said}#{incident_id} {incident_page_url(self.public_url, incident_id)} ({reference})"

    def _confirm(
        self, incident_id: int, reserved: _Reserved, silence_id: str, actor: Actor,
        duration: timedelta, comment: str | None,
    ) -> None:
        with session_scope(self.engine) as session:
            incident = _require_incident(session, incident_id, lock=True)
            confirmed = session.scalar(
                update(IncidentSilence)
                .where(IncidentSilence.id == reserved.row_id, IncidentSilence.silence_id.is_(None))
                .values(silence_id=silence_id)
                .returning(IncidentSilence.id)
            )
            if confirmed is None:
                return  # a concurrent retry of the same request recorded it
            with Lifecycle(session, events=self.events) as life:
                life.silenced(incident, actor, silence_id=silence_id,
                              duration=format_duration(duration),
                              ends_at=reserved.request.ends_at, comment=comment)
        log.info("incident_silenced", incident_id=incident_id, silence_id=silence_id)

    def _record_expired(
        self, incident_id: int, actor: Actor, done: list[tuple[int, str | None]]
    ) -> int:
        if not done:
            return 0
        with session_scope(self.engine) as session:
            incident = _require_incident(session, incident_id, lock=True)
            now = datetime.now(UTC)
            expired: list[str] = []
            for row_id, silence_id in done:
                recorded = session.scalar(
                    update(IncidentSilence)
                    .where(IncidentSilence.id == row_id, IncidentSilence.expired_at.is_(None))
                    .values(expired_at=now, silence_id=silence_id)
                    .returning(IncidentSilence.silence_id)
                )
                if recorded is not None:
                    expired.append(recorded)
            if expired:
                with Lifecycle(session, events=self.events, now=now) as life:
                    life.unsilenced(incident, actor, silence_ids=expired)
        return len(expired)


def _require_incident(session: Session, incident_id: int, *, lock: bool = False) -> Incident:
    incident = session.get(Incident, incident_id, with_for_update=lock)
    if incident is None:
        raise IncidentNotFound(incident_id)
    return incident
