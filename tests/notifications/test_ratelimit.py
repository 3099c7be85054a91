"""The Slack token bucket, in real Redis, shared by concurrent takers."""

from __future__ import annotations

import threading
import time

import pytest

from incident.notifications.ratelimit import TokenBucket


@pytest.mark.usefixtures("clean_state")
def test_a_burst_then_one_token_per_second(redis_client):
    bucket = TokenBucket(redis_client, rate=1.0, burst=3, reserve=0)
    assert [bucket.take("C1") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = bucket.take("C1")
    assert 0.9 < wait <= 1.0
    assert bucket.take("C2") == 0.0  # channels have buckets of their own


@pytest.mark.usefixtures("clean_state")
def test_concurrent_takers_never_get_more_than_the_bucket_allows(redis_client):
    bucket = TokenBucket(redis_client, rate=2.0, burst=3, reserve=0)
    granted: list[float] = []
    lock = threading.Lock()
    start = time.monotonic()
    stop_at = start + 2.0

    def hammer() -> None:
        while time.monotonic() < stop_at:
            if bucket.take("C") == 0.0:
                with lock:
                    granted.append(time.monotonic() - start)
            time.sleep(0.005)

    threads = [threading.Thread(target=hammer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # burst + rate * elapsed, with one token of slack for clock rounding.
    assert 3 + 2.0 * 2.0 - 1 <= len(granted) <= 3 + 2.0 * 2.0 + 1


@pytest.mark.usefixtures("clean_state")
def test_ordinary_messages_leave_a_token_for_pages(redis_client):
    bucket = TokenBucket(redis_client, rate=1.0, burst=3, reserve=1)
    assert [bucket.take("C") for _ in range(2)] == [0.0, 0.0]
    assert bucket.take("C") > 0  # the last token is kept back ...
    assert bucket.take("C", priority=True) == 0.0  # ... for a page
    assert bucket.take("C", priority=True) > 0
