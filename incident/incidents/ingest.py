"""One webhook, from the queue to committed incident state."""

from __future__ import annotations

from collections.abc import Callable

import structlog
from pydantic import ValidationError

from incident.alerts.schemas import WebhookPayload
from incident.db import session_scope
from incident.incidents.digests import DigestCache
from incident.incidents.grouping import GroupChange, NotificationIdentity, apply_notification
from incident.maintenance import watchdog
from incident.metrics import count
from incident.maintenance.watchdog import split_watchdog
from incident.notifications.planning import Channels
from incident.rules import Rules
from incident.worker.routes import INGEST, PAGE

log = structlog.get_logger(__name__)


def ingest_queue(payload: WebhookPayload, rules: Rules) -> str:
    """The queue a webhook waits on: ``page`` when any of its alerts is SEV1/SEV2.

    Severity is known only from the rules, so the receiver asks them before
    queueing: otherwise a SEV1 would wait behind a storm of SEV4s in ``ingest``.
    Resolved alerts count too, so every notification of an urgent group takes
    the same queue and its resolution cannot overtake its firing.
    """
    urgent = any(rules.classify(alert.labels).rank <= 2 for alert in payload.alerts)
    return PAGE if urgent else INGEST


def ingest_payload(
    raw: dict,
    *,
    rules: Rules,
    digests: DigestCache,
    channels: Channels | None = None,
    after_commit: Callable[[GroupChange], None] | None = None,
) -> GroupChange | None:
    """Apply one notification. None when it was a repeat the cache recognised."""
    try:
        payload = WebhookPayload.model_validate(raw)
    except ValidationError as exc:
        # The receiver validated it; only a hand-made message gets here. Retrying
        # cannot help, so say why and drop it.
        log.error("dropping invalid payload", errors=exc.errors(include_input=False))
        return None
    if rules.maintenance.watchdog is not None:
        payload, heard = split_watchdog(payload, rules.maintenance.watchdog)
        if heard:
            watchdog.record_arrival(digests.client)
        if payload is None:
            return None
    identity = NotificationIdentity.of(payload)
    structlog.contextvars.bind_contextvars(
        receiver=payload.receiver, group_key=payload.group_key, group=identity.group_hash[:16]
    )
    if digests.is_current(identity.group_hash, identity.digest):
        log.debug("repeat notification, nothing to do")
        return None
    with session_scope() as session:
        change = apply_notification(
            session, payload, rules, identity=identity, channels=channels
        )
    if change.opened_severity is not None:
        count("incident_incidents_opened", severity=change.opened_severity)
    if after_commit is not None:
        after_commit(change)
    digests.remember(change.group_hash, change.revision, change.digest)
    if change.incident_id is not None:
        structlog.contextvars.bind_contextvars(incident_id=change.incident_id)
    if change.events:
        log.info("incident updated", events=[e.value for e in change.events])
    return change
