"""The dead-man's switch: Alertmanager's always-firing Watchdog alert must keep arriving.

Prometheus fires ``Watchdog`` all the time and Alertmanager repeats it every
``repeat_interval``; if it stops arriving, something between Prometheus and
us is broken, and no other alert would reach anyone either. Arrivals are
recorded in Redis by whichever worker ingests them (Watchdog alerts never open
incidents themselves); a beat job compares the last arrival with
``max_silence`` and raises or resolves the "alerting pipeline silent" incident.
"""

from __future__ import annotations

from datetime import UTC, datetime

import redis

from incident.alerts.schemas import WebhookPayload
from incident.maintenance.internal import InternalAlerts
from incident.rules.durations import format_duration
from incident.rules.maintenance import Watchdog

LAST_SEEN = "incident:watchdog:last-seen"
# When the check first ran without an arrival: silence counts from start-up too.
ARMED_AT = "incident:watchdog:armed-at"
SILENT_ALERT = "AlertingPipelineSilent"


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
    client.set(LAST_SEEN, (now or datetime.now(UTC)).timestamp())


def last_seen(client: redis.Redis) -> datetime | None:
    value = client.get(LAST_SEEN)
    return datetime.fromtimestamp(float(value), UTC) if value is not None else None


def check(
    client: redis.Redis, rule: Watchdog, alerts: InternalAlerts, *, now: datetime | None = None
) -> dict | None:
    """The notification to apply: the silence firing, its resolution, or None."""
    now = now or datetime.now(UTC)
    client.set(ARMED_AT, now.timestamp(), nx=True)
    armed = datetime.fromtimestamp(float(client.get(ARMED_AT)), UTC)
    seen = last_seen(client)
    reference = max(armed, seen) if seen is not None else armed
    silence = now - reference
    summary = f"No {rule.alertname} alert for over {format_duration(rule.max_silence)}"
    if silence > rule.max_silence:
        heard = f"last at {seen.isoformat(timespec='seconds')}" if seen else "never, since start-up"
        return alerts.firing(
            SILENT_ALERT, severity=rule.severity, summary=summary, now=now,
            description=(
                f"The alerting pipeline is silent: {rule.alertname} was heard {heard}. "
                "Prometheus, Alertmanager or the route to incident is broken; "
                "other alerts are probably not arriving either."
            ),
        )
    return alerts.resolved(SILENT_ALERT, severity=rule.severity, summary=summary, now=now)
