"""Only the target's own failures count toward its breaker, never failures its alert caused.

Label values shape every request: a junk alert whose labels make a command
too big to start, or name a path the target has no route for, fails, but
says nothing about the target. Five of them must leave the breaker closed
for the real incident that follows.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from incident.rules import parse_rules
from tests import factories
from tests.fakes.http_server import Reply
from tests.remediation.target import FakeTarget
from tests.remediation.test_engine import Harness, runs

# Each under the receiver's 16 KiB limit; together over the 128 KiB the kernel
# allows one environment variable, which INCIDENT_LABELS would have to be.
JUNK_LABELS = {f"junk{n}": "x" * 15_000 for n in range(10)}


class VolumeService(FakeTarget):
    """Knows one volume of db-1; any other path is a 404, as a real router answers."""

    def handle(self, method: str, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        if method != "/hosts/db-1/volumes/data/clean":
            return Reply(404, {"error": "no such volume"})
        return super().handle(method, body, headers)


@pytest.fixture
def target() -> Iterator[VolumeService]:
    with VolumeService() as fake:
        yield fake


@pytest.fixture
def recorder(tmp_path: Path) -> tuple[list[str], Path]:
    script = tmp_path / "clear_disk.py"
    runs_file = tmp_path / "ran.jsonl"
    script.write_text(
        "import json, sys\n"
        f"with open({str(runs_file)!r}, 'a') as out:\n"
        "    out.write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    return [sys.executable, str(script)], runs_file


def rules(target: VolumeService, program: list[str], reset_after: str = "5m"):
    breaker = (
        f"circuit_breaker: {{failure_threshold: 3, reset_after: {reset_after}, "
        "key: '{labels.instance}'}"
    )
    return parse_rules(f"""
remediations:
  - name: clear-disk
    matchers: ['alertname="DiskFull"']
    action: command
    with: {{argv: {json.dumps([*program, "--", "{labels.instance}"])}, timeout: 10s}}
    {breaker}
  - name: clean-volume
    matchers: ['alertname="DiskFull"']
    action: http
    with:
      url: "{target.url}/hosts/{{labels.instance}}/volumes/{{labels.volume}}/clean"
      timeout: 5s
    {breaker}
""")


def disk_full(service: str, **labels: str) -> dict:
    alert = factories.alert(alertname="DiskFull", service=service, instance="db-1", **labels)
    return factories.payload(alert)


def test_five_junk_alerts_leave_the_breaker_closed_and_the_real_incident_is_remediated(
    clean_state, redis_client, target, recorder
):
    program, ran = recorder
    harness = Harness(rules(target, program), redis_client)
    for n in range(5):
        junk = disk_full(f"junk-{n}", volume=f"no-such-volume-{n}", **JUNK_LABELS)
        harness.run_to_the_end(harness.ingest(junk))

    states = harness.engine.breakers.states()
    assert all(state["state"] == "closed" for state in states), states
    assert all(state["consecutive_failures"] == 0 for state in states), states
    junk_runs = runs()
    assert [r.status for r in junk_runs] == ["failed"] * 10
    errors = {r.name: r.last_error for r in junk_runs}
    assert "INCIDENT_LABELS" in errors["clear-disk"], errors
    assert "answered HTTP 404" in errors["clean-volume"], errors
    assert not ran.exists(), "no junk command started"

    harness.run_to_the_end(harness.ingest(disk_full("real", volume="data")))
    real = runs()[10:]
    assert [(r.name, r.status) for r in real] == [
        ("clear-disk", "succeeded"), ("clean-volume", "succeeded")
    ]
    assert ran.read_text().splitlines() == [json.dumps(["--", "db-1"])]
    assert len(target.calls("/hosts/db-1/volumes/data/clean")) == 1


def clean_volume_statuses() -> list[str]:
    return [r.status for r in runs() if r.name == "clean-volume"]


def test_a_failing_target_still_opens_its_breaker(clean_state, redis_client, target, recorder):
    program, _ = recorder
    harness = Harness(rules(target, program), redis_client)
    target.failing = True
    for n in range(4):
        harness.run_to_the_end(harness.ingest(disk_full(f"real-{n}", volume="data")))
    assert clean_volume_statuses() == ["failed"] * 3 + ["skipped_circuit_open"]


def test_a_half_open_trial_spent_on_a_junk_alert_goes_to_the_next_incident(
    clean_state, redis_client, target, recorder
):
    program, _ = recorder
    harness = Harness(rules(target, program, reset_after="1s"), redis_client)
    target.failing = True
    for n in range(3):
        harness.run_to_the_end(harness.ingest(disk_full(f"real-{n}", volume="data")))
    target.failing = False
    time.sleep(1.1)

    harness.run_to_the_end(harness.ingest(disk_full("junk", volume="no-such-volume")))
    harness.run_to_the_end(harness.ingest(disk_full("real-again", volume="data")))
    assert clean_volume_statuses() == ["failed"] * 4 + ["succeeded"]
    (state,) = [s for s in harness.engine.breakers.states() if s["remediation"] == "clean-volume"]
    assert state["state"] == "closed"
