"""The shared circuit breaker, on a real Redis: states, transitions and the single trial."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis

from incident.remediation.breaker import CircuitBreakers, Verdict, redis_key

RESET = 0.5
LEASE = 5.0


@pytest.fixture
def breakers(redis_client: redis.Redis) -> CircuitBreakers:
    return CircuitBreakers(redis_client)


@pytest.fixture
def key() -> str:
    return redis_key("restart-api", f"svc-{uuid.uuid4().hex[:8]}")


def acquire(breakers: CircuitBreakers, key: str, token: str = "t", *, lease: float = LEASE):
    return breakers.acquire(key, token=token, trial_lease=lease, reset_after=RESET)


def record(breakers: CircuitBreakers, key: str, succeeded: bool, token: str = "t") -> str | None:
    return breakers.record(
        key, succeeded=succeeded, token=token, threshold=3, reset_after=RESET,
        remediation="restart-api", target=key.rsplit(":", 1)[-1],
    )


def trip(breakers: CircuitBreakers, key: str) -> None:
    transitions = [record(breakers, key, False) for _ in range(3)]
    assert transitions == [None, None, "opened"]


def test_a_new_breaker_is_closed_and_lets_calls_through(breakers, key):
    permit = acquire(breakers, key)
    assert permit.verdict is Verdict.CLOSED and permit.allowed


def test_it_opens_after_threshold_consecutive_failures_and_refuses_until_reset_after(
    breakers, key
):
    trip(breakers, key)
    permit = acquire(breakers, key)
    assert permit.verdict is Verdict.OPEN and not permit.allowed
    assert 0 < permit.retry_at.timestamp() - time.time() <= RESET + 0.1


def test_a_success_resets_the_count_so_only_consecutive_failures_open_it(breakers, key):
    record(breakers, key, False)
    record(breakers, key, False)
    record(breakers, key, True)
    assert record(breakers, key, False) is None
    assert record(breakers, key, False) is None
    assert acquire(breakers, key).verdict is Verdict.CLOSED


def test_after_reset_after_one_trial_goes_through_and_its_success_closes_it(breakers, key):
    trip(breakers, key)
    time.sleep(RESET + 0.05)
    assert acquire(breakers, key, "trial").verdict is Verdict.TRIAL
    assert acquire(breakers, key, "other").verdict is Verdict.OPEN
    assert record(breakers, key, True, "trial") == "closed"
    assert acquire(breakers, key, "after").verdict is Verdict.CLOSED
    # Closed again from zero: it takes the full threshold to open once more.
    assert record(breakers, key, False) is None


def test_a_failed_trial_opens_it_again_for_another_reset_after(breakers, key):
    trip(breakers, key)
    time.sleep(RESET + 0.05)
    assert acquire(breakers, key, "trial").verdict is Verdict.TRIAL
    assert record(breakers, key, False, "trial") == "reopened"
    assert acquire(breakers, key, "next").verdict is Verdict.OPEN
    time.sleep(RESET + 0.05)
    assert acquire(breakers, key, "next").verdict is Verdict.TRIAL


def test_an_outcome_from_before_the_trial_does_not_decide_it(breakers, key):
    trip(breakers, key)
    time.sleep(RESET + 0.05)
    assert acquire(breakers, key, "trial").verdict is Verdict.TRIAL
    # A call let through while it was closed reports late: it is not the trial.
    assert record(breakers, key, True, "late") is None
    assert acquire(breakers, key, "other").verdict is Verdict.OPEN


def test_a_trial_whose_worker_died_is_handed_on_when_its_lease_runs_out(breakers, key):
    trip(breakers, key)
    time.sleep(RESET + 0.05)
    assert acquire(breakers, key, "lost", lease=0.3).verdict is Verdict.TRIAL
    assert acquire(breakers, key, "waiting").verdict is Verdict.OPEN
    time.sleep(0.35)
    assert acquire(breakers, key, "waiting").verdict is Verdict.TRIAL


def test_exactly_one_of_many_concurrent_callers_gets_the_half_open_trial(redis_url, key):
    setup = CircuitBreakers(redis.Redis.from_url(redis_url))
    trip(setup, key)
    time.sleep(RESET + 0.05)
    verdicts: list[Verdict] = []
    start = threading.Barrier(16)

    def caller(n: int) -> None:
        own = CircuitBreakers(redis.Redis.from_url(redis_url))
        start.wait()
        verdicts.append(acquire(own, key, f"caller-{n}").verdict)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(verdicts).count(Verdict.TRIAL) == 1
    assert verdicts.count(Verdict.OPEN) == 15


def test_breakers_are_separate_per_target(breakers):
    api, db = redis_key("restart", "api"), redis_key("restart", "db")
    trip(breakers, api)
    assert acquire(breakers, api).verdict is Verdict.OPEN
    assert acquire(breakers, db).verdict is Verdict.CLOSED


def test_a_long_target_key_is_hashed_into_a_short_redis_key():
    key = redis_key("restart", "x" * 10_000)
    assert len(key) < 120 and key.startswith("incident:breaker:restart:sha256:")
    assert redis_key("restart", None) == "incident:breaker:restart"


def test_states_describe_each_breaker_for_the_api(breakers, key):
    trip(breakers, key)
    (state,) = [s for s in breakers.states() if s["key"] == key.rsplit(":", 1)[-1]]
    assert state["remediation"] == "restart-api"
    assert state["state"] == "open"
    assert state["consecutive_failures"] == 3
    assert state["failure_threshold"] == 3
    assert state["opened_at"] is not None and state["next_trial_at"] > state["opened_at"]
    time.sleep(RESET + 0.05)
    (state,) = [s for s in breakers.states() if s["key"] == key.rsplit(":", 1)[-1]]
    assert state["state"] == "half_open"


def test_the_trial_asking_again_keeps_its_trial(breakers, key):
    # Its first answer was lost with the connection, and the task asks again.
    trip(breakers, key)
    time.sleep(RESET + 0.05)
    assert acquire(breakers, key, "run-7").verdict is Verdict.TRIAL
    assert acquire(breakers, key, "run-7").verdict is Verdict.TRIAL
    assert acquire(breakers, key, "run-8").verdict is Verdict.OPEN


def test_a_trial_released_without_a_verdict_goes_to_the_next_caller_at_once(breakers, key):
    trip(breakers, key)
    time.sleep(RESET + 0.05)
    assert acquire(breakers, key, "junk").verdict is Verdict.TRIAL
    assert acquire(breakers, key, "real").verdict is Verdict.OPEN
    assert breakers.release_trial(key, token="junk") is True
    assert breakers.release_trial(key, token="junk") is False
    assert acquire(breakers, key, "real").verdict is Verdict.TRIAL
    assert record(breakers, key, True, "real") == "closed"
