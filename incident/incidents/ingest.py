"""One webhook, from the queue to committed incident state."""

from __future__ import annotations

import time

import structlog
from pydantic import ValidationError

from incident.alerts.schemas import WebhookPayload
from incident.db import session_scope
from incident.incidents import watchdog
from incident.incidents.events import NO_SUBSCRIBERS, EventBus, caused_by_webhook
from incident.incidents.grouping import GroupChange, WebhookIdentity, apply_webhook
from incident.incidents.repeats import RepeatCache
from incident.metrics import count, observe
from incident.queues import INGEST, PAGE
from incident.rules import Rules

INGEST_TASK = "incident.incidents.ingest_webhook"

log = structlog.get_logger(__name__)


def ingest_queue(payload: WebhookPayload, rules: Rules) -> str:
    """The queue a webhook waits on: ``page`` when any of its alerts is SEV1/SEV2.

    Severity is known only from the rules, so the receiver asks them before
    queueing: otherwise a SEV1 would wait behind a storm of SEV4s in ``ingest``.
    Resolved alerts count too, so every webhook of an urgent group takes
    the same queue and its resolution cannot overtake its firing.
    """
    urgent = any(rules.classify(alert.labels).rank <= 2 for alert in payload.alerts)
    return PAGE if urgent else INGEST


def ingest_payload(
    raw: dict,
    *,
    rules: Rules,
    repeats: RepeatCache,
    events: EventBus = NO_SUBSCRIBERS,
    received_at: float | None = None,
) -> GroupChange | None:
    """Apply one webhook. None when it was a repeat the cache recognised.

    What it changes reaches ``events``' subscribers in the same transaction;
    the messages they leave in the outbox are sent once it commits.
    ``received_at``: when the receiver accepted it (Unix time), for the latency
    histograms; None for a message sent without it (an older receiver, a replay).
    """
    try:
        payload = WebhookPayload.model_validate(raw)
    except ValidationError as exc:
        # The receiver validated it; only a hand-made message gets here. Retrying
        # cannot help, so say why and drop it.
        log.error("dropping invalid payload", errors=exc.errors(include_input=False))
        return None
    if rules.maintenance.watchdog is not None:
        payload, heard = watchdog.split_watchdog(payload, rules.maintenance.watchdog)
        if heard:
            watchdog.record_arrival(repeats.client)
        if payload is None:
            return None
    identity = WebhookIdentity.of(payload)
    structlog.contextvars.bind_contextvars(
        receiver=payload.receiver, group_key=payload.group_key, group=identity.group_hash[:16]
    )
    if repeats.is_current(identity.group_hash, identity.digest):
        log.debug("repeated webhook, nothing to do")
        return None
    with session_scope() as session, caused_by_webhook(session, received_at):
        change = apply_webhook(session, payload, rules, identity=identity, events=events)
    if received_at is not None and change.incident_id is not None and not change.duplicate:
        # Committed: a redelivery of this message finds its change made, and is not timed.
        observe("incident_webhook_to_incident_seconds", time.time() - received_at)
    if change.opened_severity is not None:
        count("incident_incidents_opened", severity=change.opened_severity)
    repeats.remember(change.group_hash, change.revision, change.digest)
    if change.incident_id is not None:
        structlog.contextvars.bind_contextvars(incident_id=change.incident_id)
    if change.events:
        log.info("incident updated", events=[e.value for e in change.events])
    return change
