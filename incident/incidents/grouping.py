"""Turn one Alertmanager webhook into incident state.

Everything for a group happens while holding a row lock on its ``alert_groups``
row, so two workers handed the same notification at the same moment serialise
there: the second sees the first one's digest and changes nothing. The partial
unique index on open incidents per group backs that up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, selectinload

from incident.alerts.identity import group_hash, payload_digest
from incident.alerts.schemas import Alert as IncomingAlert
from incident.alerts.schemas import WebhookPayload
from incident.alerts.title import incident_summary, incident_title
from incident.incidents.events import NO_SUBSCRIBERS, EventBus
from incident.incidents.lifecycle import ALERTMANAGER, Lifecycle
from incident.incidents.models import Alert, AlertGroup, Incident, IncidentStatus, TimelineKind
from incident.rules import Rules, Severity

FIRING = "firing"
RESOLVED = "resolved"
# A group can grow to thousands of alerts (a whole fleet down), and every ingest,
# delivery and API read of its incident loads them. Past this many, new
# fingerprints are counted (Incident.alerts_dropped) instead of stored.
MAX_ALERTS_PER_INCIDENT = 1_000


class WebhookIdentity(NamedTuple):
    group_hash: str
    digest: str

    @classmethod
    def of(cls, payload: WebhookPayload) -> WebhookIdentity:
        return cls(group_hash(payload.receiver, payload.group_key), payload_digest(payload))


@dataclass
class GroupChange:
    """What applying one webhook did."""

    group_hash: str
    digest: str
    revision: int
    incident_id: int | None = None
    events: list[TimelineKind] = field(default_factory=list)
    duplicate: bool = False
    # The severity an incident opened with, when this change opened one.
    opened_severity: str | None = None


def apply_webhook(
    session: Session,
    payload: WebhookPayload,
    rules: Rules,
    *,
    now: datetime | None = None,
    identity: WebhookIdentity | None = None,
    events: EventBus = NO_SUBSCRIBERS,
) -> GroupChange:
    """Apply one webhook; what it changes goes through the lifecycle to ``events``."""
    ghash, digest = identity or WebhookIdentity.of(payload)
    group = _lock_group(session, ghash, payload)
    change = GroupChange(group_hash=ghash, digest=digest, revision=group.revision)
    if group.last_digest == digest:
        change.duplicate = True
        return change

    # Written before the lifecycle flushes, so the group row takes one UPDATE.
    group.last_digest = digest
    group.revision += 1
    with Lifecycle(session, events=events, now=now) as life:
        # Incidents open only here, and each counts: a group that never opened has none.
        incident = _latest_incident(session, group.id) if group.incident_count else None
        updater = _IncidentUpdater(life, rules, payload)
        if incident is None or incident.status == IncidentStatus.RESOLVED:
            incident = updater.open_or_reopen(group, incident)
        else:
            updater.merge_alerts(incident)
        if incident is not None:
            updater.settle_state(incident)
            change.incident_id = incident.id
            change.events = list(dict.fromkeys(life.kinds(incident)))
            if TimelineKind.OPENED in change.events:
                change.opened_severity = str(incident.severity)

    change.revision = group.revision
    return change


def _lock_group(session: Session, ghash: str, payload: WebhookPayload) -> AlertGroup:
    """The group's row, locked; created if absent.

    A group seen before is locked without writing it (a re-send the cache
    missed must still write nothing). A new one is inserted and locked in one
    statement: an upsert that writes a column of a row another delivery just
    inserted takes that row's lock, so concurrent first deliveries wait on
    the same row instead of racing a read-then-write.
    """
    lock = select(AlertGroup).where(AlertGroup.group_hash == ghash).with_for_update()
    group = session.scalars(lock).one_or_none()
    if group is not None:
        return group
    upsert = insert(AlertGroup).values(
        group_hash=ghash, receiver=payload.receiver, group_key=payload.group_key
    )
    upsert = upsert.on_conflict_do_update(
        index_elements=[AlertGroup.group_hash], set_={"receiver": upsert.excluded.receiver}
    ).returning(AlertGroup)
    return session.scalars(upsert, execution_options={"populate_existing": True}).one()


def _latest_incident(session: Session, group_id: int) -> Incident | None:
    return session.scalars(
        select(Incident)
        .where(Incident.group_id == group_id)
        .order_by(Incident.id.desc())
        .limit(1)
        .options(selectinload(Incident.alerts))
        .with_for_update(of=Incident)
    ).one_or_none()


def _is_stale(stored: Alert, incoming: IncomingAlert) -> bool:
    """An older episode, or a lagging replica repeating news we already have.

    Prometheus gives an alert that fires again a new startsAt, so a firing copy
    with the startsAt of an alert we already saw resolve is old news.
    """
    if incoming.starts_at < stored.starts_at:
        return True
    return (
        incoming.firing
        and stored.status == RESOLVED
        and incoming.starts_at == stored.starts_at
    )


def _fires_again(stored: Alert | None, incoming: IncomingAlert) -> bool:
    """A firing alert that is news: unseen, or a new episode of one that resolved.

    An alert still stored as firing (an incident resolved by hand while its
    alerts fire) does not reopen anything when Alertmanager repeats it.
    """
    if not incoming.firing:
        return False
    if stored is None:
        return True
    return stored.status == RESOLVED and not _is_stale(stored, incoming)


class _IncidentUpdater:
    """Merges a webhook's alerts into an incident; every state change goes through ``life``."""

    def __init__(self, life: Lifecycle, rules: Rules, payload: WebhookPayload) -> None:
        self.life = life
        self.session = life.session
        self.rules = rules
        self.payload = payload
        self.now = life.now
        # Announced by settle_state, and only if the incident stays open: when the
        # last alert resolves, "resolved" says it all.
        self.resolved_alerts: list[str] = []
        # Firing alerts past the cap: not stored, yet they still keep the
        # incident open and count towards its severity.
        self.unstored_firing: list[Severity] = []

    def open_or_reopen(self, group: AlertGroup, last: Incident | None) -> Incident | None:
        stored = {a.fingerprint: a for a in last.alerts} if last else {}
        if not any(_fires_again(stored.get(a.fingerprint), a) for a in self.payload.alerts):
            # Late or repeated news about a closed incident (or a resolution for a
            # group we never saw open): keep the alert states, open nothing.
            if last is not None:
                self.merge_alerts(last)
            return last
        window = self.rules.maintenance.reopen_window
        if last is not None and last.resolved_at and self.now - last.resolved_at <= window:
            self._refresh_header(last)
            self.merge_alerts(last, announce=False)
            self.life.reopen(last, ALERTMANAGER, severity=self._worst_incoming())
            return last
        return self._open(group)

    def _open(self, group: AlertGroup) -> Incident:
        group.incident_count += 1
        incident = Incident(
            key=f"{group.group_hash[:24]}-{group.incident_count}",
            group_id=group.id,
            severity=self._worst_incoming(),
            receiver=self.payload.receiver,
            alerts=[],
        )
        self._refresh_header(incident)
        self.merge_alerts(incident, announce=False)
        firing = sum(1 for a in incident.alerts if a.status == FIRING) + len(self.unstored_firing)
        self.life.open(incident, ALERTMANAGER, alerts=firing)
        return incident

    def _refresh_header(self, incident: Incident) -> None:
        incident.title = incident_title(self.payload)
        incident.summary = incident_summary(self.payload)
        incident.labels = dict(self.payload.common_labels)
        incident.group_labels = dict(self.payload.group_labels)
        incident.external_url = self.payload.external_url
        incident.updated_at = self.now

    def _worst_incoming(self) -> Severity:
        return self.rules.incident_severity(self.payload)

    def merge_alerts(self, incident: Incident, *, announce: bool = True) -> None:
        stored = {a.fingerprint: a for a in incident.alerts}
        self.unstored_firing = []
        unstored = 0
        for incoming in self.payload.alerts:
            alert = stored.get(incoming.fingerprint)
            if alert is None and len(stored) >= MAX_ALERTS_PER_INCIDENT:
                unstored += 1
                if incoming.firing:
                    self.unstored_firing.append(self.rules.classify(incoming.labels))
                continue
            if alert is None:
                alert = Alert(fingerprint=incoming.fingerprint, starts_at=incoming.starts_at)
                incident.alerts.append(alert)
                stored[incoming.fingerprint] = alert
                was_firing = False
            elif _is_stale(alert, incoming):
                continue
            else:
                was_firing = alert.status == FIRING
            alert.status = incoming.status
            alert.severity = self.rules.classify(incoming.labels)
            alert.labels = dict(incoming.labels)
            alert.annotations = dict(incoming.annotations)
            alert.starts_at = incoming.starts_at
            alert.ends_at = incoming.ends_at
            alert.generator_url = incoming.generator_url
            if not announce:
                continue
            if incoming.firing and not was_firing:
                self.life.alert_added(incident, ALERTMANAGER, fingerprint=incoming.fingerprint,
                                      severity=alert.severity)
            elif not incoming.firing and was_firing:
                self.resolved_alerts.append(incoming.fingerprint)
        # Alertmanager sends the whole group every time, so one webhook's overflow
        # is the group's: the largest seen, not a sum that every re-send would inflate.
        incident.alerts_dropped = max(incident.alerts_dropped or 0, unstored)
        incident.updated_at = self.now
        if announce and incident.status != IncidentStatus.RESOLVED:
            self._refresh_header(incident)

    def settle_state(self, incident: Incident) -> None:
        """Raise severity, resolve, and track flapping from the merged alerts."""
        firing = [Severity(a.severity) for a in incident.alerts if a.status == FIRING]
        firing += self.unstored_firing
        if incident.status != IncidentStatus.RESOLVED:
            worst = Severity.worst(firing)
            if worst is not None:
                self.life.raise_severity(incident, ALERTMANAGER, worst)
            if not firing:
                self.life.resolve(incident, ALERTMANAGER)
            else:
                for fingerprint in self.resolved_alerts:
                    self.life.alert_resolved(incident, ALERTMANAGER, fingerprint=fingerprint)
        self.life.track_flapping(incident, self.rules.maintenance.flapping)
