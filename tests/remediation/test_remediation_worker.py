"""Remediations through the whole pipeline: a real api, two real worker processes, a local target."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise
from typing import Any

import httpx
import pytest
import redis

from tests import factories
from tests.conftest import ApiProcess, WorkerProcess, wait_for
from tests.notifications.support import API, all_incidents, post
from tests.remediation.target import FakeTarget

RESET_AFTER = 3


@pytest.fixture(scope="module")
def target() -> Iterator[FakeTarget]:
    with FakeTarget() as fake:
        yield fake


@pytest.fixture(scope="module")
def remediation_env(incident_environment, target, tmp_path_factory) -> dict[str, str]:
    rules = tmp_path_factory.mktemp("rules") / "rules.yml"
    rules.write_text(f"""
remediations:
  - name: restart-api
    matchers: ['alertname="HighErrorRate"']
    action: http
    with:
      url: "{target.url}/services/{{labels.service}}/restart"
      timeout: 5s
    retry: {{attempts: 5, backoff: 600ms, max_backoff: 10s}}
  - name: flush-cache
    matchers: ['alertname="CacheDown"']
    action: http
    with:
      url: "{target.url}/cache/flush"
      timeout: 10s
    circuit_breaker: {{failure_threshold: 2, reset_after: {RESET_AFTER}s}}
    on_failure: escalate
""")
    return {
        **incident_environment,
        "INCIDENT_RULES_FILE": str(rules),
        "INCIDENT_ESCALATION_POLL_SECONDS": "1",
    }


@pytest.fixture(scope="module")
def workers(remediation_env, tmp_path_factory) -> Iterator[list[WorkerProcess]]:
    redis.Redis.from_url(remediation_env["INCIDENT_BROKER_URL"]).flushdb()
    logs = tmp_path_factory.mktemp("workers")
    processes = [WorkerProcess(remediation_env, logs / f"worker{n}.log") for n in (1, 2)]
    for process in processes:
        process.wait_ready()
    yield processes
    for process in processes:
        process.stop()


@pytest.fixture(scope="module")
def api(remediation_env, tmp_path_factory) -> Iterator[ApiProcess]:
    process = ApiProcess(remediation_env, tmp_path_factory.mktemp("api") / "api.log")
    process.wait_ready()
    yield process
    process.stop()


def finished_runs(api, count: int, *, timeout: float = 40) -> list[dict[str, Any]]:
    def done():
        oldest_first = sorted(all_incidents(api), key=lambda each: each["id"])
        runs = [run for each in oldest_first for run in each["remediations"]]
        finished = [run for run in runs if run["status"] not in ("pending", "running")]
        return finished if len(finished) >= count else None

    return wait_for(done, timeout=timeout, interval=0.2, what=f"{count} finished remediation runs")


def cache_down(service: str) -> dict[str, Any]:
    return factories.payload(factories.alert(alertname="CacheDown", service=service))


def test_a_target_failing_three_times_is_retried_with_growing_delays_until_it_succeeds(
    clean_state, workers, api, target
):
    target.fail_next(3, status=500)
    post(api, factories.payload(factories.alert(service="checkout")))
    (run,) = finished_runs(api, 1)
    assert (run["status"], run["attempts"], run["last_error"]) == ("succeeded", 4, None)

    calls = target.calls("/services/checkout/restart")
    assert len(calls) == 4
    gaps = [later.at - earlier.at for earlier, later in pairwise(calls)]
    # Equal jitter over 600 ms doubling: [0.3, 0.6], [0.6, 1.2], [1.2, 2.4] s.
    assert gaps[0] >= 0.3 and gaps[1] >= 0.6 and gaps[2] >= 1.2, gaps
    assert gaps[2] > gaps[0], gaps

    (shown,) = all_incidents(api)
    statuses = [e["detail"]["status"] for e in shown["timeline"] if e["kind"] == "remediation"]
    assert statuses == ["retrying", "retrying", "retrying", "succeeded"]


def test_the_breaker_opens_skips_and_escalates_then_lets_exactly_one_trial_through_the_fleet(
    clean_state, workers, api, target
):
    target.failing = True
    for service in ("a", "b"):
        post(api, cache_down(service))
    assert [r["status"] for r in finished_runs(api, 2)] == ["failed", "failed"]

    post(api, cache_down("c"))
    finished_runs(api, 3)
    skipped = next(i for i in all_incidents(api) if i["title"] == "CacheDown c")
    assert skipped["remediations"][0]["status"] == "skipped_circuit_open"
    assert skipped["severity"] == "SEV2", "on_failure: escalate applies at once"
    assert len(target.calls("/cache/flush")) == 2

    breakers = httpx.get(f"{api.url}/api/breakers", headers=API, timeout=10).json()["items"]
    assert [(b["remediation"], b["state"]) for b in breakers] == [("flush-cache", "open")]

    # Half-open: six incidents at once on four pool processes in two workers.
    # The trial is slow, so every other attempt asks while it is in flight.
    wait_for(lambda: httpx.get(f"{api.url}/api/breakers", headers=API, timeout=10)
             .json()["items"][0]["state"] == "half_open", timeout=RESET_AFTER + 5,
             what="reset_after to pass")
    target.failing = False
    target.delay_next(1, 6.0)
    for service in ("d", "e", "f", "g", "h", "i"):
        post(api, cache_down(service))
    runs = finished_runs(api, 9)
    trial_round = sorted(r["status"] for r in runs[3:])
    assert trial_round == ["skipped_circuit_open"] * 5 + ["succeeded"]
    assert len(target.calls("/cache/flush")) == 3, "exactly one trial reached the target"

    breakers = httpx.get(f"{api.url}/api/breakers", headers=API, timeout=10).json()["items"]
    assert breakers[0]["state"] == "closed"
    post(api, cache_down("j"))
    assert finished_runs(api, 10)[-1]["status"] == "succeeded"


def test_breakers_need_the_api_token(api):
    response = httpx.get(f"{api.url}/api/breakers", timeout=10)
    assert response.status_code == 401
