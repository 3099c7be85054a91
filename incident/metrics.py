"""Prometheus metrics for the whole fleet, served by any api process at ``/metrics``.

Counters are kept in one Redis hash that every process (api replicas, worker
pool processes on any machine) adds to, so one scrape sees the fleet's totals
and two workers' events are counted together; prometheus_client's
multiprocess mode only sums processes that share a directory on one host.
Each process adds to a local tally and a background thread writes it to Redis
every second (``HINCRBY`` in one pipeline), so an event costs no round trip,
and a tally that cannot be written (Redis away) is kept for the next flush.

Latency histograms work the same way. Each process observes into its own
prometheus_client ``Histogram`` (its buckets, its ``le`` semantics); the same
flush adds what each cumulative bucket and sum gained since the last flush to
a second hash (``HINCRBY``, ``HINCRBYFLOAT`` for sums), and the scrape exports
the hash as histograms. Bucket counts of processes add up exactly, so the
fleet's histogram is the one a single process observing everything would have.

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
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.utils import floatToGoString
from sqlalchemy import event
from sqlalchemy.orm import Session

from incident import keys, tracing

log = structlog.get_logger(__name__)

KEY = keys.METRICS
HISTOGRAM_KEY = keys.METRICS_HISTOGRAMS
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


@dataclass(frozen=True)
class HistogramSpec:
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...]
    # Every label combination, exported with zero counts before its first observation.
    known: tuple[tuple[str, ...], ...] = ((),)


_CHANNELS = ("slack", "pagerduty", "email")
# From the receiver's 202 onwards. Each figure the product promises is a bound,
# so "within it" is one bucket over _count: 0.3 s and 1 s (a page reaching
# PagerDuty, with and without a page worker), 30 s (SEV1 paged), 60 s (Slack
# through a storm).
PIPELINE_BUCKETS = (0.05, 0.1, 0.25, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                    600.0, 1800.0)
# People: five minutes to an hour for an acknowledgement, up to a week for a resolution.
RESPONSE_BUCKETS = (60.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0,
                    86400.0, 259200.0, 604800.0)

HISTOGRAMS: dict[str, HistogramSpec] = {
    "incident_webhook_to_incident_seconds": HistogramSpec(
        "From the receiver accepting a webhook (its 202) to the worker committing the "
        "incident change it made.", (), PIPELINE_BUCKETS,
    ),
    "incident_webhook_to_notification_seconds": HistogramSpec(
        "From the receiver accepting a webhook to Slack, PagerDuty or the mail server "
        "accepting a notification it caused, by channel and the incident's severity.",
        ("channel", "severity"), PIPELINE_BUCKETS,
        tuple((c, s) for c in _CHANNELS for s in _SEVERITIES),
    ),
    "incident_time_to_acknowledge_seconds": HistogramSpec(
        "From an incident's opening (or reopening) to its first acknowledgement, by severity.",
        ("severity",), RESPONSE_BUCKETS, tuple((s,) for s in _SEVERITIES),
    ),
    "incident_time_to_resolve_seconds": HistogramSpec(
        "From an incident's opening (or reopening) to its resolution, by severity.",
        ("severity",), RESPONSE_BUCKETS, tuple((s,) for s in _SEVERITIES),
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


class _LocalHistograms:
    """This process's observations, and how much of them Redis already has."""

    def __init__(self) -> None:
        registry = CollectorRegistry(auto_describe=False)
        self.registry = registry
        self.histograms = {
            name: Histogram(name, spec.help, spec.labels, buckets=spec.buckets, registry=registry)
            for name, spec in HISTOGRAMS.items()
        }
        # Hash field -> the cumulative value already added to Redis.
        self.flushed: dict[str, float] = {}
        # Observed since the last look: an idle process's flush reads nothing.
        self.dirty = False

    def observe(self, name: str, seconds: float, labels: Mapping[str, str]) -> None:
        histogram = self.histograms[name]
        (histogram.labels(**labels) if labels else histogram).observe(seconds)
        self.dirty = True

    def gained(self) -> tuple[dict[str, int], dict[str, float]]:
        """What each cumulative bucket count, and each sum, gained since the last flush."""
        buckets: dict[str, int] = {}
        sums: dict[str, float] = {}
        if not self.dirty:
            return buckets, sums
        self.dirty = False
        for family in self.registry.collect():
            for sample in family.samples:
                # _count is the +Inf bucket, and _created is this process's own.
                is_bucket = sample.name.endswith("_bucket")
                if not is_bucket and not sample.name.endswith("_sum"):
                    continue
                field = _field(sample.name, sample.labels)
                gain = sample.value - self.flushed.get(field, 0.0)
                if not gain:
                    continue
                if is_bucket:
                    buckets[field] = round(gain)
                else:
                    sums[field] = gain
        return buckets, sums

    def written(self, *gains: Mapping[str, float]) -> None:
        for part in gains:
            for field, gain in part.items():
                self.flushed[field] = self.flushed.get(field, 0.0) + gain


class FleetMetrics:
    """Counter increments and histogram observations of this process, written to
    Redis in the background."""

    def __init__(self, client: redis.Redis, *, flush_seconds: float = FLUSH_SECONDS) -> None:
        self.client = client
        self.flush_seconds = flush_seconds
        self._tally: Counter[str] = Counter()
        self._histograms = _LocalHistograms()
        self._lock = threading.Lock()
        # One flush at a time: two would both add the same histogram gains.
        self._flushing = threading.Lock()
        self._pid = 0
        self._wake = threading.Event()

    def add(self, name: str, amount: int = 1, **labels: str) -> None:
        if name not in COUNTERS:
            raise KeyError(f"unknown counter {name!r}")
        field = _field(name, labels)
        with self._lock:
            self._in_this_process()
            self._tally[field] += amount

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        if name not in HISTOGRAMS:
            raise KeyError(f"unknown histogram {name!r}")
        with self._lock:
            self._in_this_process()
        # Clocks of two hosts may disagree by a little: never a negative latency.
        self._histograms.observe(name, max(0.0, seconds), labels)

    def _in_this_process(self) -> None:
        if self._pid != os.getpid():
            # First use in this process (a forked pool process has no thread of
            # its parent's, and its parent writes what it observed): start afresh.
            self._pid = os.getpid()
            self._histograms = _LocalHistograms()
            threading.Thread(target=self._run, name="metrics-flush", daemon=True).start()
            atexit.register(self.flush)

    def flush(self) -> None:
        if self._pid != os.getpid():
            return  # nothing observed here; what was inherited is the parent's to write
        with self._flushing:
            with self._lock:
                batch, self._tally = self._tally, Counter()
            histograms = self._histograms
            buckets, sums = histograms.gained()
            if not batch and not buckets and not sums:
                return
            try:
                pipe = self.client.pipeline(transaction=False)
                for field, amount in batch.items():
                    pipe.hincrby(KEY, field, amount)
                for field, amount in buckets.items():
                    pipe.hincrby(HISTOGRAM_KEY, field, amount)
                for field, total in sums.items():
                    pipe.hincrbyfloat(HISTOGRAM_KEY, field, total)
                with tracing.quiet():  # housekeeping, not part of anyone's trace
                    pipe.execute()
            except redis.RedisError as exc:
                with self._lock:
                    self._tally.update(batch)
                histograms.dirty = True
                log.debug("metrics not flushed; kept for the next try", error=str(exc))
                return
            histograms.written(buckets, sums)

    def _run(self) -> None:
        pid = os.getpid()
        while self._pid == pid:
            self._wake.wait(self.flush_seconds)
            self.flush()


_fleet: FleetMetrics | None = None
_fleet_lock = threading.Lock()


def _metrics() -> FleetMetrics | None:
    global _fleet
    if _fleet is None:
        with _fleet_lock:
            if _fleet is None:
                try:
                    from incident.sharedstate import get_redis

                    _fleet = FleetMetrics(get_redis())
                except Exception as exc:  # no Redis configured: nothing to count into
                    log.debug("metrics off", error=str(exc))
                    return None
    return _fleet


def count(name: str, amount: int = 1, **labels: str) -> None:
    """Add to a fleet-wide counter. Never raises: metrics must not break the pipeline."""
    fleet = _metrics()
    if fleet is not None:
        fleet.add(name, amount, **labels)


def observe(name: str, seconds: float, **labels: str) -> None:
    """Add one observation to a fleet-wide histogram (see HISTOGRAMS)."""
    fleet = _metrics()
    if fleet is not None:
        fleet.observe(name, seconds, **labels)


_AFTER_COMMIT = "incident.metrics.after_commit"


def observe_after_commit(session: Session, name: str, seconds: float, **labels: str) -> None:
    """Observe once ``session``'s transaction commits, and never if it rolls back.

    A change observed this way is observed once: a task redelivered after the
    commit finds the change made and makes (and observes) nothing, and one
    retried after a rollback observes when its own attempt commits.
    """
    session.info.setdefault(_AFTER_COMMIT, []).append((name, seconds, labels))


@event.listens_for(Session, "after_commit")
def _observe_committed(session: Session) -> None:
    for name, seconds, labels in session.info.pop(_AFTER_COMMIT, []):
        observe(name, seconds, **labels)


@event.listens_for(Session, "after_rollback")
def _forget_rolled_back(session: Session) -> None:
    session.info.pop(_AFTER_COMMIT, None)


def flush() -> None:
    """Write this process's tally now (at shutdown, and in tests)."""
    if _fleet is not None:
        _fleet.flush()


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


@dataclass
class _Observed:
    buckets: dict[str, float]
    sum: float = 0.0


def read_histograms(client: redis.Redis) -> dict[str, dict[tuple[str, ...], _Observed]]:
    """The fleet's histograms: per family, per label values, cumulative buckets by ``le``."""
    values: dict[str, dict[tuple[str, ...], _Observed]] = {name: {} for name in HISTOGRAMS}
    for field, amount in client.hgetall(HISTOGRAM_KEY).items():
        sample, labels = _parse(field)
        name, _, part = sample.rpartition("_")
        spec = HISTOGRAMS.get(name)
        if spec is None or part not in ("bucket", "sum"):
            continue
        key = tuple(labels.get(label, "") for label in spec.labels)
        observed = values[name].setdefault(key, _Observed({}))
        if part == "sum":
            observed.sum += float(amount)
        else:
            le = labels.get("le", "")
            observed.buckets[le] = observed.buckets.get(le, 0.0) + float(amount)
    return values


def histogram_families(values: Mapping[str, Mapping[tuple[str, ...], _Observed]]) -> Iterator[Any]:
    from prometheus_client.core import HistogramMetricFamily

    for name, spec in HISTOGRAMS.items():
        family = HistogramMetricFamily(name, spec.help, labels=spec.labels)
        bounds = [floatToGoString(b) for b in spec.buckets] + ["+Inf"]
        seen = dict(values.get(name, {}))
        for key in spec.known:
            seen.setdefault(key, _Observed({}))
        for key, observed in sorted(seen.items()):
            family.add_metric(
                list(key), [(le, observed.buckets.get(le, 0.0)) for le in bounds], observed.sum
            )
        yield family


def gauge(name: str, help_text: str, labels: Iterable[str] = (), samples=()) -> Any:
    from prometheus_client.core import GaugeMetricFamily

    family = GaugeMetricFamily(name, help_text, labels=list(labels))
    for label_values, value in samples:
        family.add_metric(list(label_values), value)
    return family
