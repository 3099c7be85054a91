"""Prometheus metrics for the whole fleet, served by any api process at ``/metrics``.

Counters are kept in one Redis hash that every process (api replicas, worker
pool processes on any machine) adds to, so one scrape sees the fleet's totals
and two workers' events are counted together; prometheus_client's
multiprocess mode only sums processes that share a directory on one host.
Each process adds to a local tally and a background thread writes it to Redis
every second (``HINCRBY`` in one pipeline), so an event costs no round trip,
and a tally that cannot be written (Redis away) is kept for the next flush.

Gauges are read when scraped: open incidents from PostgreSQL, breakers, queue
depths and the Watchdog from Redis, backup ages from the backup directory.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import redis
import structlog

from incident import keys

log = structlog.get_logger(__name__)

KEY = keys.METRICS
FLUSH_SECONDS = 1.0


@dataclass(frozen=True)
class CounterSpec:
    help: str
    labels: tuple[str, ...]
    # Label values always exported, at zero until they happen, so alert rules
    # and dashboards see the series from the start.
    known: tuple[tuple[str, ...], ...] = ()


_SEVERITIES = ("SEV1", "SEV2", "SEV3", "SEV4")

COUNTERS: dict[str, CounterSpec] = {
    "incident_webhooks": CounterSpec(
        "Alertmanager webhooks received, by outcome (accepted, unauthorized, bad_request, "
        "too_large, unsupported_media_type, invalid, unavailable).",
        ("outcome",),
        tuple((o,) for o in ("accepted", "unauthorized", "bad_request", "too_large",
                             "unsupported_media_type", "invalid", "unavailable")),
    ),
    "incident_alerts_received": CounterSpec(
        "Alerts in accepted webhooks (re-sends included).", (), ((),)
    ),
    "incident_incidents_opened": CounterSpec(
        "Incidents opened, by severity at opening.", ("severity",),
        tuple((s,) for s in _SEVERITIES),
    ),
    "incident_notifications": CounterSpec(
        "Notification deliveries, by channel and outcome (sent, failed, retried, coalesced).",
        ("channel", "outcome"),
    ),
    "incident_remediations": CounterSpec(
        "Remediation runs finished, by remediation and outcome (succeeded, failed, "
        "skipped_circuit_open, cancelled).",
        ("remediation", "outcome"),
    ),
}


def _field(name: str, labels: Mapping[str, str]) -> str:
    return _field_of(name, tuple(sorted(labels.items())))


@lru_cache(maxsize=1024)
def _field_of(name: str, labels: tuple[tuple[str, str], ...]) -> str:
    # A counter's label values are few (outcomes, channels, severities): each
    # field is written out once per process, not once per event.
    return json.dumps([name, [list(pair) for pair in labels]], separators=(",", ":"))


def _parse(field: bytes | str) -> tuple[str, dict[str, str]]:
    name, labels = json.loads(field)
    return name, dict(labels)


class FleetCounters:
    """Counter increments for this process, written to Redis in the background."""

    def __init__(self, client: redis.Redis, *, flush_seconds: float = FLUSH_SECONDS) -> None:
        self.client = client
        self.flush_seconds = flush_seconds
        self._tally: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._pid = 0
        self._wake = threading.Event()

    def add(self, name: str, amount: int = 1, **labels: str) -> None:
        if name not in COUNTERS:
            raise KeyError(f"unknown counter {name!r}")
        field = _field(name, labels)
        with self._lock:
            self._tally[field] += amount
            if self._pid != os.getpid():
                # First use in this process (a forked pool process has no
                # thread of its parent's): start its flusher.
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="metrics-flush", daemon=True).start()
                atexit.register(self.flush)

    def flush(self) -> None:
        with self._lock:
            batch, self._tally = self._tally, Counter()
        if not batch:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for field, amount in batch.items():
                pipe.hincrby(KEY, field, amount)
            pipe.execute()
        except redis.RedisError as exc:
            with self._lock:
                self._tally.update(batch)
            log.debug("metrics not flushed; kept for the next try", error=str(exc))

    def _run(self) -> None:
        pid = os.getpid()
        while self._pid == pid:
            self._wake.wait(self.flush_seconds)
            self.flush()


_counters: FleetCounters | None = None
_counters_lock = threading.Lock()


def count(name: str, amount: int = 1, **labels: str) -> None:
    """Add to a fleet-wide counter. Never raises: metrics must not break the pipeline."""
    global _counters
    if _counters is None:
        with _counters_lock:
            if _counters is None:
                try:
                    from incident.sharedstate import get_redis

                    _counters = FleetCounters(get_redis())
                except Exception as exc:  # no Redis configured: nothing to count into
                    log.debug("metrics off", error=str(exc))
                    return
    _counters.add(name, amount, **labels)


def flush() -> None:
    """Write this process's tally now (at shutdown, and in tests)."""
    if _counters is not None:
        _counters.flush()


def read_counters(client: redis.Redis) -> dict[str, list[tuple[dict[str, str], int]]]:
    values: dict[str, list[tuple[dict[str, str], int]]] = {name: [] for name in COUNTERS}
    for field, amount in client.hgetall(KEY).items():
        name, labels = _parse(field)
        if name in values:
            values[name].append((labels, int(amount)))
    return values


def counter_families(values: Mapping[str, list[tuple[dict[str, str], int]]]) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily

    for name, spec in COUNTERS.items():
        family = CounterMetricFamily(name, spec.help, labels=spec.labels)
        seen: dict[tuple[str, ...], int] = {}
        for labels, amount in values.get(name, []):
            key = tuple(labels.get(label, "") for label in spec.labels)
            seen[key] = seen.get(key, 0) + amount
        for key in spec.known:
            seen.setdefault(key, 0)
        for key, amount in sorted(seen.items()):
            family.add_metric(list(key), amount)
        yield family


def gauge(name: str, help_text: str, labels: Iterable[str] = (), samples=()) -> Any:
    from prometheus_client.core import GaugeMetricFamily

    family = GaugeMetricFamily(name, help_text, labels=list(labels))
    for label_values, value in samples:
        family.add_metric(list(label_values), value)
    return family
