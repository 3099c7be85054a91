"""Breakers nobody uses go away: their hash, their registry entry, their API row and metrics.

A templated key (``{labels.instance}``) makes one breaker per value ever
seen; without expiry each would stay in Redis, in ``GET /api/breakers`` and
as three metric series for ever. A short ``reset_after`` makes the idle time
(``IDLE_RESETS`` of them) short enough to wait for here.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from incident.api.app import create_app
from incident.config import get_settings
from incident.remediation.breaker import REGISTRY, CircuitBreakers, Verdict, redis_key
from tests.conftest import API_TOKEN

# Kept this many reset_after periods unused (once it may close), as the README says.
IDLE_RESETS = 10
SHORT = 0.1  # reset_after, seconds: 1 s idle and it is gone
LONG = 3.0


def idle_ms(reset_after: float) -> int:
    return int(reset_after * 1000 * IDLE_RESETS)


@pytest.fixture
def breakers(redis_client: redis.Redis, clean_state) -> CircuitBreakers:
    return CircuitBreakers(redis_client)


@pytest.fixture
def api(incident_environment) -> Iterator[TestClient]:
    with TestClient(create_app(get_settings())) as client:
        yield client


def listed(api: TestClient) -> list[tuple[str, str | None, str]]:
    response = api.get("/api/breakers", headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert response.status_code == 200, response.text
    return [(b["remediation"], b["key"], b["state"]) for b in response.json()["items"]]


def record(breakers: CircuitBreakers, target: str, *, succeeded: bool, reset_after: float,
           threshold: int = 3, token: str = "t") -> str | None:
    return breakers.record(
        redis_key("clear-disk", target), succeeded=succeeded, token=token, threshold=threshold,
        reset_after=reset_after, remediation="clear-disk", target=target,
    )


def members(client: redis.Redis) -> set[str]:
    return {member.decode() for member in client.smembers(REGISTRY)}


def test_a_closed_breaker_left_alone_expires_and_leaves_no_registry_entry_or_api_row(
    breakers, redis_client, api
):
    host = f"db-{uuid.uuid4().hex[:6]}"
    key = redis_key("clear-disk", host)
    record(breakers, host, succeeded=False, reset_after=SHORT)
    assert listed(api) == [("clear-disk", host, "closed")]
    assert 0 < redis_client.pttl(key) <= idle_ms(SHORT)

    time.sleep(idle_ms(SHORT) / 1000 + 0.3)
    assert not redis_client.exists(key)
    assert listed(api) == []
    assert key not in members(redis_client), "reading the breakers prunes the registry"


def test_use_keeps_a_closed_breaker(breakers, redis_client):
    host = "db-used"
    key = redis_key("clear-disk", host)
    record(breakers, host, succeeded=True, reset_after=SHORT)
    deadline = time.monotonic() + idle_ms(SHORT) / 1000 * 2
    while time.monotonic() < deadline:
        permit = breakers.acquire(key, token="t", trial_lease=5, reset_after=SHORT)
        assert permit.verdict is Verdict.CLOSED
        time.sleep(0.1)
    assert redis_client.exists(key)


def test_an_open_breaker_outlives_its_reset_after_and_still_refuses_until_then(
    breakers, redis_client, api
):
    open_key = redis_key("clear-disk", "db-broken")
    assert record(breakers, "db-broken", succeeded=False, reset_after=LONG, threshold=1) == (
        "opened"
    )
    record(breakers, "db-idle", succeeded=True, reset_after=SHORT)
    assert redis_client.pttl(open_key) > (LONG * 1000) + idle_ms(LONG) - 1000

    time.sleep(idle_ms(SHORT) / 1000 + 0.3)
    assert listed(api) == [("clear-disk", "db-broken", "open")]
    permit = breakers.acquire(open_key, token="t", trial_lease=5, reset_after=LONG)
    assert permit.verdict is Verdict.OPEN
    # Asking again never shortens its life below the open time left plus the idle time.
    assert redis_client.pttl(open_key) >= idle_ms(LONG)


def test_a_half_open_trial_keeps_the_breaker_for_its_whole_lease(breakers, redis_client):
    key = redis_key("clear-disk", "db-trial")
    record(breakers, "db-trial", succeeded=False, reset_after=SHORT, threshold=1)
    time.sleep(SHORT + 0.05)
    lease = 30.0
    assert breakers.acquire(key, token="trial", trial_lease=lease, reset_after=SHORT).verdict is (
        Verdict.TRIAL
    )
    assert redis_client.pttl(key) > lease * 1000


def test_the_periodic_prune_drops_gone_breakers_and_dates_old_ones(breakers, redis_client):
    record(breakers, "db-gone", succeeded=True, reset_after=SHORT)
    # As a breaker written before they expired: no expiry at all.
    legacy = redis_key("clear-disk", "db-legacy")
    redis_client.hset(legacy, mapping={"state": "closed", "failures": 1, "reset_ms": 2000,
                                       "remediation": "clear-disk", "key": "db-legacy"})
    redis_client.sadd(REGISTRY, legacy)
    time.sleep(idle_ms(SHORT) / 1000 + 0.3)

    assert breakers.prune() == 1
    assert members(redis_client) == {legacy}
    assert 0 < redis_client.pttl(legacy) <= 2000 * IDLE_RESETS
