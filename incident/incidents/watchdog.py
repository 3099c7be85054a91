"""Watchdog arrivals: the always-firing alert that proves the alerting pipeline works.

Ingestion takes Watchdog alerts out of each webhook (they never open
incidents) and records when one last arrived; maintenance's dead-man's switch
reads that record.
"""

from __future__ import annotations

from datetime import UTC, datetime

import redis

from incident import keys
from incident.alerts.schemas import WebhookPayload
from incident.rules.maintenance import Watchdog


def split_watchdog(payload: WebhookPayload, rule: Watchdog) -> tuple[WebhookPayload | None, bool]:
    """The payload without its Watchdog alerts (None if nothing else), and whether one fired."""
    watchdog = [a for a in payload.alerts if a.labels.get("alertname") == rule.alertname]
    if not watchdog:
        return payload, False
    heard = any(alert.firing for alert in watchdog)
    rest = [a for a in payload.alerts if a.labels.get("alertname") != rule.alertname]
    if not rest:
        return None, heard
    return payload.model_copy(update={"alerts": rest}), heard


def record_arrival(client: redis.Redis, now: datetime | None = None) -> None:
    client.set(keys.WATCHDOG_LAST_SEEN, (now or datetime.now(UTC)).timestamp())


def last_seen(client: redis.Redis) -> datetime | None:
    value = client.get(keys.WATCHDOG_LAST_SEEN)
    return datetime.fromtimestamp(float(value), UTC) if value is not None else None
