"""GET /metrics: the fleet's counters and histograms from Redis, gauges read at scrape time.

Every api replica reports the same fleet-wide values, so scrape one (through
the service address) or aggregate replicas with ``max``, not ``sum``. A part
that cannot be read (PostgreSQL or Redis away) is left out and
``incident_metrics_source_up{source}`` says which, rather than failing the
whole scrape.

``incident_watchdog_last_seen_timestamp_seconds`` is described (HELP, TYPE)
from the start but has no sample until a Watchdog has arrived: "never seen" is
then an absent series, which ``absent()`` and ``unless`` see, where NaN would
be a present series whose every comparison is false, so a ``time() - x > 600``
rule would stay silent. ``incident_watchdog_configured`` says whether silence
matters at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import func, select

from incident.config import Settings
from incident.db import engine_for, session_scope
from incident.incidents.models import Incident, IncidentStatus
from incident.maintenance import watchdog
from incident.maintenance.backup_files import backup_status
from incident.metrics import (
    counter_families, gauge, histogram_families, read_counters, read_histograms,
)
from incident.notifications.models import EscalationTimer
from incident.remediation.breaker import CircuitBreakers
from incident.rules import Rules
from incident.sharedstate import redis_for
from incident.worker.routes import QUEUES

log = structlog.get_logger(__name__)

_OPEN = (IncidentStatus.TRIGGERED.value, IncidentStatus.ACKNOWLEDGED.value)
_SEVERITIES = ("SEV1", "SEV2", "SEV3", "SEV4")
_BREAKER_STATES = ("closed", "open", "half_open")


class FleetCollector(Collector):
    def __init__(self, settings: Settings, rules: Rules) -> None:
        self.settings = settings
        self.rules = rules

    def collect(self) -> Iterator[Any]:
        sources: dict[str, bool] = {}
        for source, read in (
            ("redis", self._from_redis),
            ("database", self._from_database),
            ("backups", self._from_backups),
        ):
            families = _guarded(source, read)
            sources[source] = families is not None
            yield from families or ()
        yield gauge(
            "incident_watchdog_configured",
            "Whether the rules file sets maintenance.watchdog (1) or not (0).",
            [], [((), float(self.rules.maintenance.watchdog is not None))],
        )
        yield gauge(
            "incident_metrics_source_up",
            "Whether /metrics could read this source (1) or left its metrics out (0).",
            ["source"], [((name,), float(ok)) for name, ok in sources.items()],
        )

    def _from_redis(self) -> list[Any]:
        client = redis_for(self.settings.shared_redis_url)
        families = list(counter_families(read_counters(client)))
        families.extend(histogram_families(read_histograms(client)))
        states = CircuitBreakers(client).states()
        families.append(gauge(
            "incident_breaker_state",
            "Remediation circuit breakers: 1 for the state each is in.",
            ["remediation", "key", "state"],
            [((b["remediation"], b["key"] or "", state), float(b["state"] == state))
             for b in states for state in _BREAKER_STATES],
        ))
        broker = redis_for(self.settings.require_broker_url()) if _is_redis(
            self.settings.require_broker_url()) else None
        if broker is not None:
            pipe = broker.pipeline(transaction=False)
            for queue in QUEUES:
                pipe.llen(queue)
            depths = pipe.execute()
            families.append(gauge(
                "incident_queue_depth", "Messages waiting in each queue (not yet taken by a worker).",
                ["queue"], [((queue,), float(depth)) for queue, depth in zip(QUEUES, depths, strict=True)],
            ))
        seen = watchdog.last_seen(client)
        families.append(gauge(
            "incident_watchdog_last_seen_timestamp_seconds",
            "When the Watchdog alert last arrived (Unix time); no sample until the first.",
            [], [((), seen.timestamp())] if seen is not None else [],
        ))
        return families

    def _from_database(self) -> list[Any]:
        engine = engine_for(self.settings.require_database_url())
        with session_scope(engine) as session:
            rows = session.execute(
                select(Incident.severity, Incident.status, func.count())
                .where(Incident.status.in_(_OPEN))
                .group_by(Incident.severity, Incident.status)
            ).all()
            oldest_due = session.scalar(
                select(func.min(EscalationTimer.due_at)).where(EscalationTimer.active)
            )
        counts = {(severity, status): 0 for severity in _SEVERITIES for status in _OPEN}
        counts.update({(row[0], row[1]): row[2] for row in rows})
        lag = 0.0
        if oldest_due is not None:
            lag = max(0.0, (datetime.now(UTC) - oldest_due).total_seconds())
        return [
            gauge("incident_open_incidents", "Open incidents, by severity and status.",
                  ["severity", "status"], [(key, float(n)) for key, n in sorted(counts.items())]),
            gauge("incident_escalation_lag_seconds",
                  "How overdue the most overdue escalation timer is (0: none is due).",
                  [], [((), lag)]),
        ]

    def _from_backups(self) -> list[Any]:
        status = backup_status(self.settings.backup_dir)
        now = datetime.now(UTC).timestamp()
        families = [gauge("incident_backups", "Complete backups in the backup directory.",
                          [], [((), float(status["backups"]))])]
        for key, name, text in (
            ("last_good_backup_time", "incident_backup_last_good_age_seconds",
             "Age of the last good backup (absent until there is one)."),
            ("last_good_verify_time", "incident_backup_verification_last_good_age_seconds",
             "Age of the last backup verification that passed (absent until one has)."),
        ):
            if status[key] is not None:
                families.append(gauge(name, text, [], [((), now - status[key])]))
        if status["last_verify_ok"] is not None:
            families.append(gauge(
                "incident_backup_verification_ok", "Whether the last verification passed.",
                [], [((), float(bool(status["last_verify_ok"])))],
            ))
        return families


def _guarded(source: str, read: Callable[[], list[Any]]) -> list[Any] | None:
    try:
        return read()
    except Exception as exc:
        log.warning("metrics source unavailable", source=source, error=str(exc))
        return None


def _is_redis(url: str) -> bool:
    return url.split("://", 1)[0] in ("redis", "rediss", "unix")


def render(settings: Settings, rules: Rules) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(settings, rules))
    return generate_latest(registry), CONTENT_TYPE_LATEST
