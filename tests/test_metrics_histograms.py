"""Latency histograms: prometheus_client's buckets, added up across processes through Redis."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from prometheus_client.exposition import generate_latest

from incident import metrics
from incident.db import session_scope
from incident.embedded import free_port
from incident.metrics import HISTOGRAMS, FleetMetrics, histogram_families, read_histograms

PAGES = "incident_webhook_to_notification_seconds"
SEV1_PAGE = {"channel": "pagerduty", "severity": "SEV1"}


def exported(client: redis.Redis) -> dict[tuple[str, tuple], float]:
    """The histograms as /metrics renders them, parsed back by prometheus_client."""

    class Fleet:
        def collect(self):
            yield from histogram_families(read_histograms(client))

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fleet())
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }


def sample(samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_every_family_and_label_set_is_exported_at_zero_before_any_observation(
    clean_state, redis_client
):
    samples = exported(redis_client)
    for name, spec in HISTOGRAMS.items():
        assert 30.0 in spec.buckets or name.startswith("incident_time_to_")
        for values in spec.known:
            labels = dict(zip(spec.labels, values, strict=True))
            assert sample(samples, f"{name}_count", **labels) == 0
            assert sample(samples, f"{name}_sum", **labels) == 0
            assert sample(samples, f"{name}_bucket", **labels, le="+Inf") == 0
    assert sum(1 for key in samples if key[0] == f"{PAGES}_count") == 12


def test_observations_are_bucketed_as_prometheus_client_buckets_them(clean_state, redis_client):
    fleet = FleetMetrics(redis_client, flush_seconds=3600)
    for seconds in (0.3, 30.0, 30.5):
        fleet.observe(PAGES, seconds, **SEV1_PAGE)
    fleet.flush()
    samples = exported(redis_client)
    # le is "less than or equal": each bound is in its own bucket.
    assert sample(samples, f"{PAGES}_bucket", **SEV1_PAGE, le="0.25") == 0
    assert sample(samples, f"{PAGES}_bucket", **SEV1_PAGE, le="0.3") == 1
    assert sample(samples, f"{PAGES}_bucket", **SEV1_PAGE, le="30.0") == 2
    assert sample(samples, f"{PAGES}_bucket", **SEV1_PAGE, le="60.0") == 3
    assert sample(samples, f"{PAGES}_count", **SEV1_PAGE) == 3
    assert sample(samples, f"{PAGES}_sum", **SEV1_PAGE) == pytest.approx(60.8)
    assert sample(samples, f"{PAGES}_count", channel="slack", severity="SEV1") == 0


OBSERVER = """
from incident import metrics
for seconds in (0.2, 12.0, 45.0):
    metrics.observe("incident_webhook_to_notification_seconds", seconds,
                    channel="pagerduty", severity="SEV1")
metrics.observe("incident_time_to_resolve_seconds", 7200.0, severity="SEV2")
metrics.flush()
"""


def test_two_processes_observations_add_up(clean_state, redis_client, incident_environment):
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", OBSERVER], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
    samples = exported(redis_client)
    assert sample(samples, f"{PAGES}_count", **SEV1_PAGE) == 6
    assert sample(samples, f"{PAGES}_sum", **SEV1_PAGE) == pytest.approx(2 * 57.2)
    assert sample(samples, f"{PAGES}_bucket", **SEV1_PAGE, le="0.25") == 2
    assert sample(samples, f"{PAGES}_bucket", **SEV1_PAGE, le="30.0") == 4
    assert sample(samples, "incident_time_to_resolve_seconds_count", severity="SEV2") == 2
    assert sample(samples, "incident_time_to_resolve_seconds_bucket", severity="SEV2",
                  le="3600.0") == 0


def _observe_in_child(fleet: FleetMetrics) -> None:
    fleet.observe(PAGES, 1.0, **SEV1_PAGE)
    fleet.flush()


def test_a_forked_process_writes_only_its_own_observations(clean_state, redis_client):
    fleet = FleetMetrics(redis_client, flush_seconds=3600)
    fleet.observe(PAGES, 1.0, **SEV1_PAGE)  # not flushed yet when the pool forks
    child = multiprocessing.get_context("fork").Process(target=_observe_in_child, args=(fleet,))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    fleet.flush()
    assert sample(exported(redis_client), f"{PAGES}_count", **SEV1_PAGE) == 2


def test_observations_redis_could_not_take_are_written_by_the_next_flush_once(
    clean_state, redis_client
):
    fleet = FleetMetrics(redis.Redis(port=free_port(), socket_connect_timeout=0.5),
                         flush_seconds=3600)
    fleet.observe(PAGES, 2.0, **SEV1_PAGE)
    fleet.flush()  # Redis away: kept
    fleet.client = redis_client
    fleet.flush()
    fleet.flush()
    samples = exported(redis_client)
    assert sample(samples, f"{PAGES}_count", **SEV1_PAGE) == 1
    assert sample(samples, f"{PAGES}_sum", **SEV1_PAGE) == 2.0


def test_an_observation_after_commit_happens_only_if_the_transaction_commits(
    clean_state, redis_client
):
    with session_scope() as session:
        metrics.observe_after_commit(session, PAGES, 3.0, channel="email", severity="SEV2")
    with pytest.raises(RuntimeError), session_scope() as session:
        metrics.observe_after_commit(session, PAGES, 5.0, channel="email", severity="SEV2")
        raise RuntimeError("rolled back")
    metrics.flush()
    samples = exported(redis_client)
    assert sample(samples, f"{PAGES}_count", channel="email", severity="SEV2") == 1
    assert sample(samples, f"{PAGES}_sum", channel="email", severity="SEV2") == 3.0
