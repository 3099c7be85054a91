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

from incident import keys
from incident.incidents.watchdog import last_seen, record_arrival, split_watchdog
from incident.maintenance.internal import InternalAlerts
from incident.rules.durations import format_duration
from incident.rules.maintenance import Watchdog

SILENT_ALERT = "AlertingPipelineSilent"
# Arrivals are recorded by ingestion (incidents/watchdog.py); kept importable here.
__all__ = ["SILENT_ALERT", "check", "last_seen", "record_arrival", "split_watchdog"]


def check(
    client: redis.Redis, rule: Watchdog, alerts: InternalAlerts, *, now: datetime | None = None
) -> dict | None:
    """The notification to apply: the silence firing, its resolution, or None."""
    now = now or datetime.now(UTC)
    client.set(keys.WATCHDOG_ARMED_AT, now.timestamp(), nx=True)
    armed = datetime.fromtimestamp(float(client.get(keys.WATCHDOG_ARMED_AT)), UTC)
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
