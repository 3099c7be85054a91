"""End to end: alerts/s from POST to stored incident, with real workers draining.

For each worker concurrency: first the drain ceiling (a pre-filled backlog of new
groups, workers alone on the CPU), then a fixed rate of new groups posted to the
api for the sustained duration while the webhook queues' length is sampled every second.
A rate holds when the queue does not grow and every accepted payload ends up as
its incident with all its alerts. The second attempt steps up after a rate that held, or down to just under the
rate actually served (offered minus queue growth) after one that did not.

Every step starts on an idle system: what the previous one left (webhooks still
queued, the notifications they planned) is worked off first, and whatever is
still waiting after a bounded wait is dropped, so no step inherits a backlog.
"""

from __future__ import annotations

import threading
import time

from sqlalchemy import create_engine, text

from bench import backlog, loadgen
from bench.payloads import GroupBodies, group_id
from bench.stack import WEBHOOK_TOKEN, Stack

PATH = "/webhooks/alertmanager"
ALERTS_PER_GROUP = 10
TARGET_ALERTS_PER_S = 2000
FIRST_STEP = 0.85  # of the drain ceiling: the api and the generator need CPU too
# How long a step may wait for the previous one's leftovers to be worked off.
SETTLE_TIMEOUT_S = 120.0


def run(stack: Stack, *, quick: bool, concurrencies=(2, 4)) -> dict:
    plan = {
        "alerts_per_payload": ALERTS_PER_GROUP,
        "probe_backlog": 400 if quick else 1500,
        "probe_window_s": 3 if quick else 10,
        "sustained_s": 10 if quick else 60,
        "max_attempts": 2,
        "api_workers": 1,
    }
    if quick:
        concurrencies = concurrencies[:1]
    backlog.use_stack_in_process(stack)
    engine = create_engine(stack.database_url, pool_size=1)
    api = stack.api(plan["api_workers"])
    api.wait_ready()
    target = loadgen.Target(api.host, api.port, PATH, WEBHOOK_TOKEN)
    results = []
    try:
        for concurrency in concurrencies:
            results.append(_for_concurrency(stack, engine, target, concurrency, plan))
    finally:
        api.stop()
        engine.dispose()
    return {"plan": plan, "runs": results}


def _for_concurrency(stack: Stack, engine, target, concurrency: int, plan: dict) -> dict:
    stack.purge_queue()
    probe_bodies = GroupBodies(
        ALERTS_PER_GROUP,
        f"bench-probe-c{concurrency}-{stack.run_id}",
        prefix=group_id(f"probe{concurrency}{stack.run_id}"),
    )
    backlog.enqueue(probe_bodies.payload, plan["probe_backlog"])
    probe = backlog.drain_rate(
        stack, lambda: stack.worker(concurrency), window=plan["probe_window_s"]
    )
    worker = probe.pop("worker")
    try:
        ceiling = probe["messages_per_s"]
        rate = ceiling * FIRST_STEP
        attempts = []
        for attempt in range(plan["max_attempts"]):
            result = _sustain(stack, engine, target, concurrency, rate, attempt, plan)
            attempts.append(result)
            worker.check_alive()
            rate = _next_rate(rate, result, ceiling)
    finally:
        worker.stop()
    held = [a["alerts_per_s"] for a in attempts if a["held"]]
    failed = [a["alerts_per_s"] for a in attempts if not a["held"]]
    best = max(held, default=None)
    return {
        "worker_concurrency": concurrency,
        "drain_ceiling": {**probe, "alerts_per_s": ceiling * ALERTS_PER_GROUP},
        "attempts": attempts,
        "sustained_alerts_per_s": best,
        "lowest_failed_alerts_per_s": min(failed, default=None),
        "target_alerts_per_s": TARGET_ALERTS_PER_S,
        "target_met": best is not None and best >= TARGET_ALERTS_PER_S,
    }


def _next_rate(rate: float, result: dict, ceiling: float) -> float:
    """Step up when a rate held; when it did not, aim just under what was served."""
    if result["held"]:
        return min(ceiling, rate * 1.12)
    served = rate - max(0.0, result["llen_slope_per_s"])
    return min(0.9 * rate, max(0.5 * rate, 0.95 * served))


def _sustain(stack, engine, target, concurrency, rate, attempt, plan) -> dict:
    settled = _settle(stack)
    receiver = f"bench-e2e-c{concurrency}-{stack.run_id}-{attempt}"
    bodies = GroupBodies(ALERTS_PER_GROUP, receiver, prefix=group_id(receiver))
    sampler = _QueueSampler(stack)
    sampler.start()
    sent = loadgen.open_loop(
        target, bodies, rate=rate, seconds=plan["sustained_s"], warmup=0, connections=16
    )
    sampler.stop()
    drained_in = time.monotonic()
    drained = backlog.wait_idle(stack, timeout=60)
    drained_in = time.monotonic() - drained_in
    incidents, alerts = _stored(engine, receiver)
    samples = sampler.samples
    slope = _slope(samples)
    first, last = samples[0][1], samples[-1][1]
    # Growing: the fitted trend adds more than a second's worth of messages over the
    # run, or more than that is still waiting when sending stops.
    allowance = max(10.0, rate)
    growing = slope * plan["sustained_s"] > allowance or last > allowance
    complete = incidents == sent.accepted and alerts == sent.accepted * ALERTS_PER_GROUP
    summary = sent.summary()
    return {
        "offered_webhooks_per_s": rate,
        "alerts_per_s": rate * ALERTS_PER_GROUP,
        "seconds": plan["sustained_s"],
        "accepted": sent.accepted,
        "rejected_or_failed": sent.non_2xx + sent.errors,
        "post_p99_ms": summary["p99_ms"],
        "llen_first": first,
        "llen_last": last,
        "llen_max": max(v for _, v in samples),
        "llen_slope_per_s": slope,
        "llen_samples": [v for _, v in samples],
        "drained_after_s": drained_in if drained else None,
        "stored_incidents": incidents,
        "stored_alerts": alerts,
        "all_stored": complete,
        "started_idle_after_s": settled["waited_s"],
        "dropped_before_start": settled["dropped"],
        "held": not growing and complete and sent.non_2xx + sent.errors == 0,
    }


def _settle(stack) -> dict:
    """Wait until the workers have nothing queued or in hand (webhooks and the
    notifications they planned); past ``SETTLE_TIMEOUT_S``, drop what still waits.
    """
    started = time.monotonic()
    idle = backlog.wait_idle(stack, timeout=SETTLE_TIMEOUT_S, queues=backlog.WORKER_QUEUES)
    dropped = 0
    if not idle:
        dropped = backlog.drop_waiting(stack, backlog.WORKER_QUEUES)
        # What the workers still hold finishes (or goes back to the queue and is dropped).
        if not backlog.wait_idle(stack, timeout=SETTLE_TIMEOUT_S, queues=backlog.WORKER_QUEUES):
            dropped += backlog.drop_waiting(stack, backlog.WORKER_QUEUES)
    return {"waited_s": time.monotonic() - started, "dropped": dropped}


def _stored(engine, receiver: str) -> tuple[int, int]:
    with engine.connect() as conn:
        incidents = conn.execute(
            text("SELECT count(*) FROM incidents WHERE receiver = :r"), {"r": receiver}
        ).scalar_one()
        alerts = conn.execute(
            text(
                "SELECT count(*) FROM alerts a JOIN incidents i ON a.incident_id = i.id "
                "WHERE i.receiver = :r"
            ),
            {"r": receiver},
        ).scalar_one()
    return incidents, alerts


def _slope(samples: list[tuple[float, int]]) -> float:
    """Least-squares growth of the queue, messages per second."""
    n = len(samples)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in samples) / n
    mv = sum(v for _, v in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    return sum((t - mt) * (v - mv) for t, v in samples) / var if var else 0.0


class _QueueSampler(threading.Thread):
    """Webhook messages waiting (ingest + page) once a second, off the load generator's loop."""

    def __init__(self, stack: Stack) -> None:
        super().__init__(daemon=True)
        self._redis = stack.redis()
        self._halt = threading.Event()
        self.samples: list[tuple[float, int]] = []

    def run(self) -> None:
        start = time.monotonic()
        while True:
            self.samples.append((time.monotonic() - start, backlog.waiting_webhooks(self._redis)))
            if self._halt.wait(1.0):
                break

    def stop(self) -> None:
        """Stop sampling; the last sample is taken now, when sending has just ended."""
        self._halt.set()
        self.join()
