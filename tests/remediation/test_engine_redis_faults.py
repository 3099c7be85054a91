"""The engine when the breakers' Redis fails around an attempt, on real PostgreSQL and Redis.

The breakers here live in a Redis of their own, which a test stops at the
moment it means: while the action runs (so the action has run when Redis
goes), or before the attempt asks its breaker. Whatever ran is recorded
once; whatever did not run is tried again, never lost to a lease.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from incident.embedded import EmbeddedRedis, free_port
from incident.remediation.breaker import CircuitBreakers
from incident.remediation.engine import RemediationEngine
from tests.fakes.http_server import Reply
from tests.remediation.target import FakeTarget
from tests.remediation.test_engine import PUBLIC_URL, Harness, incident, rules_for, runs, timeline


class RedisStoppingTarget(FakeTarget):
    """A target that stops the breakers' Redis while it handles the request."""

    def __init__(self, server: EmbeddedRedis) -> None:
        super().__init__()
        self.server = server

    def handle(self, method: str, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        self.server.stop()
        return super().handle(method, body, headers)


@pytest.fixture
def breaker_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "breaker-redis")
    server.start()
    yield server
    server.stop()


def engine_on(harness: Harness, breakers: CircuitBreakers, **kwargs: Any) -> RemediationEngine:
    return RemediationEngine(
        harness.rules, breakers, events=harness.events, public_url=PUBLIC_URL, **kwargs
    )


@pytest.mark.parametrize("failing", [False, True], ids=["success", "failure"])
def test_an_outcome_is_recorded_once_when_redis_fails_before_the_breaker_counts_it(
    clean_state, redis_client, breaker_redis, failing
):
    lost_redis = redis.Redis.from_url(breaker_redis.url, socket_timeout=2)
    with RedisStoppingTarget(breaker_redis) as target:
        target.failing = failing
        harness = Harness(rules_for(target, attempts="1", on_failure="escalate"), redis_client)
        engine = engine_on(harness, CircuitBreakers(lost_redis))
        change = harness.open()
        (attempt,) = change.remediations

        step = engine.run_attempt(attempt.run_id, 1)

        expected = "failed" if failing else "succeeded"
        assert step.status == expected
        (run,) = runs()
        assert (run.status, run.attempts, run.lease_until) == (expected, 1, None)
        # What a retried task, a redelivered message and a sweep long after
        # the lease would have ended do next: nothing.
        assert engine.run_attempt(attempt.run_id, 1).status is None
        later = engine_on(harness, CircuitBreakers(redis_client),
                          clock=lambda: datetime.now(UTC) + timedelta(hours=2))
        assert later.sweep().next_attempts == []
        assert [r.status for r in runs()] == [expected]
        assert len(target.requests) == 1, "the action ran exactly once"
        entries = timeline(change.incident_id, "remediation")
        assert [e["status"] for e in entries] == [expected]
        assert incident(change.incident_id).severity == ("SEV2" if failing else "SEV3")
        assert len(timeline(change.incident_id, "escalated")) == (1 if failing else 0)


def test_an_attempt_that_cannot_ask_its_breaker_goes_back_to_pending_and_runs_once_on_retry(
    clean_state, redis_client
):
    with FakeTarget() as target:
        harness = Harness(rules_for(target), redis_client)
        (attempt,) = harness.open().remediations
        unreachable = redis.Redis(port=free_port(), socket_connect_timeout=1)
        engine = engine_on(harness, CircuitBreakers(unreachable))

        with pytest.raises(redis.ConnectionError):
            engine.run_attempt(attempt.run_id, 1)  # the task retries on this

        (run,) = runs()
        assert (run.status, run.attempts, run.lease_until, run.started_at) == (
            "pending", 0, None, None
        )
        assert run.next_attempt_at is not None, "the sweeper still sees it if every retry fails"
        assert target.requests == []

        # The task's retry, once Redis answers again.
        assert harness.engine.run_attempt(attempt.run_id, 1).status == "succeeded"
        assert harness.engine.run_attempt(attempt.run_id, 1).status is None
        assert len(target.requests) == 1
        assert [(r.status, r.attempts) for r in runs()] == [("succeeded", 1)]
