"""The one place an incident's state changes.

Every change (open, alerts added or resolved, severity raised, acknowledged,
unacknowledged, resolved, reopened, flapping, settled, escalated, silenced,
unsilenced, a remediation's outcome, a note) is a method here. Each takes its actor, changes
the incident, writes its timeline entry, and hands the entry to the event bus
in the caller's transaction, so what reacts to it (notifications, remediations)
commits or rolls back with it. Callers hold the incident's row lock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from incident.incidents.events import NO_SUBSCRIBERS, EventBus
from incident.incidents.models import Incident, IncidentStatus, TimelineEntry, TimelineKind
from incident.metrics import observe_after_commit
from incident.rules import Flapping, Severity

OPENINGS = (TimelineKind.OPENED, TimelineKind.REOPENED)
_TRANSITIONS = (TimelineKind.RESOLVED, TimelineKind.REOPENED)


@dataclass(frozen=True)
class Actor:
    """Who made a change: ``by`` (where from), with ``user`` and ``name`` where known."""

    by: str
    user: str | None = None
    name: str | None = None

    def detail(self) -> dict[str, str]:
        fields = {"by": self.by, "user": self.user, "name": self.name}
        return {key: value for key, value in fields.items() if value}

    def created_by(self) -> str:
        """As Alertmanager's ``createdBy`` reads: ``slack:U024BE7LH (alice)``,
        ``web:alice@example.com``, ``api``."""
        if not self.user:
            return self.by
        if self.name and self.name != self.user:
            return f"{self.by}:{self.user} ({self.name})"
        return f"{self.by}:{self.user}"


ALERTMANAGER = Actor("alertmanager")
API = Actor("api")
STALE = Actor("stale")
MAINTENANCE = Actor("maintenance")
SYSTEM = Actor("system")
# People, with their id and name where they act: Actor(SLACK, "U024BE7LH", "alice"),
# Actor(PAGERDUTY, agent id, agent summary), Actor(WEB, e-mail, e-mail).
SLACK = "slack"
PAGERDUTY = "pagerduty"
WEB = "web"


def announced_opening(kind: str, detail: Mapping[str, Any]) -> TimelineKind | None:
    """The opening a timeline entry is told as, or None: ``opened`` and ``reopened``
    themselves, and the end of an open incident's maintenance, which stands for the
    opening it held back (see ``leave_maintenance``)."""
    kind = TimelineKind(kind)
    if kind in OPENINGS:
        return kind
    if kind is TimelineKind.MAINTENANCE and (opening := detail.get("opening")):
        return TimelineKind(opening)
    return None


class TransitionNotAllowed(RuntimeError):
    """The incident is not in a state this change can start from."""


_VERB = {
    TimelineKind.ACKNOWLEDGED: "acknowledge",
    TimelineKind.UNACKNOWLEDGED: "unacknowledge",
    TimelineKind.RESOLVED: "resolve",
}
_ALLOWED_FROM = {
    TimelineKind.ACKNOWLEDGED: {IncidentStatus.TRIGGERED},
    TimelineKind.UNACKNOWLEDGED: {IncidentStatus.ACKNOWLEDGED},
    TimelineKind.RESOLVED: {IncidentStatus.TRIGGERED, IncidentStatus.ACKNOWLEDGED},
}


class Lifecycle:
    """The changes of one unit of work; ``publish()`` (or leaving the ``with``) hands them on."""

    def __init__(
        self, session: Session, *, events: EventBus = NO_SUBSCRIBERS, now: datetime | None = None
    ) -> None:
        self.session = session
        self.events = events
        self.now = now or datetime.now(UTC)
        self._recorded: dict[int, tuple[Incident, list[TimelineEntry]]] = {}

    def __enter__(self) -> Lifecycle:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is None:
            self.publish()

    # What was recorded, for callers that report it.

    def entries(self, incident: Incident) -> list[TimelineEntry]:
        return self._recorded.get(id(incident), (incident, []))[1]

    def kinds(self, incident: Incident) -> list[TimelineKind]:
        return [TimelineKind(entry.kind) for entry in self.entries(incident)]

    def publish(self) -> None:
        """Hand every entry recorded so far to the subscribers, incident by incident."""
        if not self._recorded:
            return
        self.session.flush()
        recorded, self._recorded = self._recorded, {}
        for incident, entries in recorded.values():
            self.events.publish(self.session, incident, entries, self.now)

    # The changes.

    def open(self, incident: Incident, actor: Actor, *, alerts: int) -> TimelineEntry:
        """A new incident, built by the caller; it is added and flushed here."""
        incident.status = IncidentStatus.TRIGGERED
        incident.created_at = incident.updated_at = incident.opened_at = self.now
        self.session.add(incident)
        self.session.flush()
        return self._record(incident, TimelineKind.OPENED, actor,
                            severity=str(incident.severity), alerts=alerts)

    def reopen(self, incident: Incident, actor: Actor, *, severity: Severity) -> TimelineEntry:
        incident.status = IncidentStatus.TRIGGERED
        incident.opened_at = self.now
        incident.resolved_at = incident.acknowledged_at = None
        incident.resolved_by = incident.acknowledged_by = None
        incident.severity = severity
        return self._record(incident, TimelineKind.REOPENED, actor, severity=severity.value)

    def alert_added(self, incident: Incident, actor: Actor, *, fingerprint: str,
                    severity: str) -> TimelineEntry:
        return self._record(incident, TimelineKind.ALERT_ADDED, actor,
                            fingerprint=fingerprint, severity=severity)

    def alert_resolved(self, incident: Incident, actor: Actor, *, fingerprint: str) -> TimelineEntry:
        return self._record(incident, TimelineKind.ALERT_RESOLVED, actor, fingerprint=fingerprint)

    def raise_severity(self, incident: Incident, actor: Actor, to: Severity,
                       **why: Any) -> TimelineEntry | None:
        """Severity only ever rises while an incident is open; None when ``to`` is no worse."""
        current = Severity(incident.severity)
        if not to.is_worse_than(current):
            return None
        incident.severity = to
        return self._record(incident, TimelineKind.SEVERITY_CHANGED, actor,
                            **{"from": current.value, "to": to.value}, **why)

    def acknowledge(self, incident: Incident, actor: Actor, *, note: str | None = None) -> TimelineEntry:
        self._require(incident, TimelineKind.ACKNOWLEDGED)
        if not self._acknowledged_since_opening(incident):
            self._observe_since_opening("incident_time_to_acknowledge_seconds", incident)
        incident.status = IncidentStatus.ACKNOWLEDGED
        incident.acknowledged_at = self.now
        incident.acknowledged_by = actor.detail()
        return self._record(incident, TimelineKind.ACKNOWLEDGED, actor, **_note(note))

    def unacknowledge(self, incident: Incident, actor: Actor, *, note: str | None = None) -> TimelineEntry:
        self._require(incident, TimelineKind.UNACKNOWLEDGED)
        incident.status = IncidentStatus.TRIGGERED
        incident.acknowledged_at = None
        incident.acknowledged_by = None
        return self._record(incident, TimelineKind.UNACKNOWLEDGED, actor, **_note(note))

    def resolve(self, incident: Incident, actor: Actor, *, note: str | None = None,
                **detail: Any) -> TimelineEntry:
        self._require(incident, TimelineKind.RESOLVED)
        self._observe_since_opening("incident_time_to_resolve_seconds", incident)
        incident.status = IncidentStatus.RESOLVED
        incident.resolved_at = self.now
        incident.resolved_by = actor.detail()
        return self._record(incident, TimelineKind.RESOLVED, actor, **_note(note), **detail)

    def escalate(self, incident: Incident, actor: Actor, *, reason: str, **detail: Any) -> TimelineEntry:
        return self._record(incident, TimelineKind.ESCALATED, actor, reason=reason, **detail)

    def remediation(self, incident: Incident, **detail: Any) -> TimelineEntry:
        """A remediation run's progress or outcome (``announce``: tell people about it)."""
        return self._record(incident, TimelineKind.REMEDIATION, SYSTEM, **detail)

    def silenced(self, incident: Incident, actor: Actor, *, silence_id: str, duration: str,
                 ends_at: datetime, comment: str | None = None) -> TimelineEntry:
        """Its alerts silenced in Alertmanager until ``ends_at`` (``duration``: ``4h``)."""
        return self._record(incident, TimelineKind.SILENCED, actor, silence_id=silence_id,
                            duration=duration, ends_at=ends_at.isoformat(),
                            **({"comment": comment} if comment else {}))

    def unsilenced(self, incident: Incident, actor: Actor, *,
                   silence_ids: list[str]) -> TimelineEntry:
        """Its silences expired in Alertmanager before their end."""
        return self._record(incident, TimelineKind.UNSILENCED, actor, silence_ids=silence_ids)

    def note(self, incident: Incident, actor: Actor, text: str) -> TimelineEntry:
        return self._record(incident, TimelineKind.NOTE, actor, note=text)

    def enter_maintenance(self, incident: Incident, *, windows: list[int]) -> TimelineEntry:
        """Opened under maintenance windows: recorded, told to nobody until they end."""
        incident.in_maintenance = True
        return self._record(incident, TimelineKind.MAINTENANCE, MAINTENANCE, windows=windows)

    def leave_maintenance(self, incident: Incident, *, opening: TimelineKind) -> TimelineEntry:
        """No window covers it any more. An open incident's entry stands for ``opening``
        (its latest opening, held back until now) and is told as that; a resolved one's
        is told nothing."""
        incident.in_maintenance = False
        held_back = {} if incident.status == IncidentStatus.RESOLVED else {"opening": opening.value}
        return self._record(incident, TimelineKind.MAINTENANCE, MAINTENANCE, ended=True,
                            **held_back)

    def track_flapping(self, incident: Incident, policy: Flapping) -> None:
        """Flapping after ``policy.transitions`` resolutions/reopenings within ``policy.within``;
        settled once a whole window passes without one."""
        transitioned = any(kind in _TRANSITIONS for kind in self.kinds(incident))
        if not transitioned and not incident.flapping:
            return
        self.session.flush()
        recent = self.session.scalar(
            select(func.count())
            .select_from(TimelineEntry)
            .where(
                TimelineEntry.incident_id == incident.id,
                TimelineEntry.kind.in_([k.value for k in _TRANSITIONS]),
                TimelineEntry.at > self.now - policy.within,
            )
        ) or 0
        if not incident.flapping and recent >= policy.transitions:
            incident.flapping = True
            self._record(incident, TimelineKind.FLAPPING, SYSTEM,
                         transitions=recent, within=str(policy.within))
        elif incident.flapping and recent == 0:
            incident.flapping = False
            self._record(incident, TimelineKind.SETTLED, SYSTEM)

    # Within.

    def _acknowledged_since_opening(self, incident: Incident) -> bool:
        """Whether this episode was acknowledged before (and unacknowledged since)."""
        return self.session.scalar(
            select(func.count())
            .select_from(TimelineEntry)
            .where(
                TimelineEntry.incident_id == incident.id,
                TimelineEntry.kind == TimelineKind.ACKNOWLEDGED.value,
                TimelineEntry.at >= _opened(incident),
            )
        ) > 0

    def _observe_since_opening(self, histogram: str, incident: Incident) -> None:
        """Time since the episode opened, by its severity now, once the change commits."""
        seconds = (self.now - _opened(incident)).total_seconds()
        observe_after_commit(self.session, histogram, seconds, severity=str(incident.severity))

    def _require(self, incident: Incident, to: TimelineKind) -> None:
        if incident.status not in _ALLOWED_FROM[to]:
            raise TransitionNotAllowed(
                f"incident {incident.id} is {incident.status}; it cannot {_VERB[to]}"
            )

    def _record(self, incident: Incident, kind: TimelineKind, actor: Actor,
                **detail: Any) -> TimelineEntry:
        incident.updated_at = self.now
        # By id, not relationship: appending to incident.timeline would load it whole.
        entry = TimelineEntry(incident_id=incident.id, at=self.now, kind=kind,
                              detail={**actor.detail(), **detail})
        self.session.add(entry)
        self._recorded.setdefault(id(incident), (incident, []))[1].append(entry)
        return entry


def _opened(incident: Incident) -> datetime:
    return incident.opened_at or incident.created_at


def _note(note: str | None) -> dict[str, str]:
    return {"note": note} if note else {}
