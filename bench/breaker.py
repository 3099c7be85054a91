"""What the shared circuit breaker adds to each remediation, on the bench's Redis.

Every remediation attempt asks the breaker once (``acquire``) and, when its
run ends, tells it the outcome (``record``): two Lua scripts, two round trips.
Measured per remediation for the common case (closed, success) and for the
refusal (open), with one client as a worker process has, then with four
processes asking about the same breaker at once, as a busy fleet would.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
import uuid

import redis

from bench.stack import Stack
from incident.remediation.breaker import CircuitBreakers, redis_key

TARGET_MEDIAN_MS = 1.0
ITERATIONS = 5_000
QUICK_ITERATIONS = 500
CONCURRENT_CLIENTS = 4


def run(stack: Stack, *, quick: bool) -> dict:
    n = QUICK_ITERATIONS if quick else ITERATIONS
    client = redis.Redis.from_url(stack.redis_url)
    breakers = CircuitBreakers(client)
    closed = _closed_path(breakers, n)
    refused = _open_path(breakers, n)
    fleet = _concurrent(stack.redis_url, n // CONCURRENT_CLIENTS)
    for key in client.scan_iter("incident:breaker:bench-*"):
        client.delete(key)
    result = {
        "iterations": n,
        "closed_success": closed,
        "open_refusal": refused,
        "concurrent": fleet,
        "target_median_ms": TARGET_MEDIAN_MS,
        "target_met": closed["median_ms"] < TARGET_MEDIAN_MS,
    }
    print(
        f"bench: breaker: closed acquire+record median {closed['median_ms']:.3f} ms, "
        f"p99 {closed['p99_ms']:.3f} ms; open refusal median {refused['median_ms']:.3f} ms; "
        f"{CONCURRENT_CLIENTS} clients median {fleet['median_ms']:.3f} ms",
        flush=True,
    )
    return result


def _closed_path(breakers: CircuitBreakers, n: int) -> dict:
    key = redis_key(f"bench-{uuid.uuid4().hex[:6]}", "svc")
    samples = []
    for i in range(n):
        start = time.perf_counter()
        breakers.acquire(key, token=str(i), trial_lease=60, reset_after=300)
        breakers.record(key, succeeded=True, token=str(i), threshold=3, reset_after=300,
                        remediation="bench", target="svc")
        samples.append(time.perf_counter() - start)
    return _summary(samples)


def _open_path(breakers: CircuitBreakers, n: int) -> dict:
    key = redis_key(f"bench-{uuid.uuid4().hex[:6]}", "svc")
    for i in range(3):
        breakers.record(key, succeeded=False, token=str(i), threshold=3, reset_after=3600,
                        remediation="bench", target="svc")
    samples = []
    for i in range(n):
        start = time.perf_counter()
        permit = breakers.acquire(key, token=str(i), trial_lease=60, reset_after=3600)
        samples.append(time.perf_counter() - start)
        assert not permit.allowed
    return _summary(samples)


def _concurrent(redis_url: str, per_client: int) -> dict:
    key = redis_key(f"bench-{uuid.uuid4().hex[:6]}", "svc")
    with multiprocessing.get_context("spawn").Pool(CONCURRENT_CLIENTS) as pool:
        parts = pool.starmap(_client, [(redis_url, key, n, per_client) for n in range(CONCURRENT_CLIENTS)])
    return {**_summary([sample for part in parts for sample in part]), "clients": CONCURRENT_CLIENTS}


def _client(redis_url: str, key: str, worker: int, per_client: int) -> list[float]:
    """One worker process asking about the same breaker as the others."""
    breakers = CircuitBreakers(redis.Redis.from_url(redis_url))
    samples = []
    for i in range(per_client):
        token = f"{worker}:{i}"
        start = time.perf_counter()
        breakers.acquire(key, token=token, trial_lease=60, reset_after=300)
        breakers.record(key, succeeded=True, token=token, threshold=3, reset_after=300,
                        remediation="bench", target="svc")
        samples.append(time.perf_counter() - start)
    return samples


def _summary(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "median_ms": round(statistics.median(ordered) * 1000, 4),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 4),
    }
