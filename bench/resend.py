"""The cost of an unchanged re-send against a new group.

In process, per call: ``ingest_payload`` for (a) a brand-new group (PostgreSQL)
and (b) a re-send of an already-applied payload (the Redis digest fast path).
Then worker-side: how fast a worker drains a backlog of each kind.
"""

from __future__ import annotations

import statistics
import time

from bench import backlog
from bench.payloads import GroupBodies, group_id
from bench.stack import Stack

TARGET_RATIO = 5.0


def run(stack: Stack, *, quick: bool, sizes=(1, 10), worker_concurrency: int = 2) -> dict:
    plan = {
        "new_group_calls": 60 if quick else 300,
        "resend_calls": 300 if quick else 3000,
        "warmup_calls": 20,
        "worker_backlog": 400 if quick else 1500,
        "worker_resend_backlog": 1000 if quick else 4000,
        "worker_window_s": 3 if quick else 8,
        "worker_concurrency": worker_concurrency,
        "worker_alerts_per_payload": 10,
    }
    backlog.use_stack_in_process(stack)
    in_process = [_in_process(stack, n, plan) for n in sizes]
    worker = _worker_side(stack, plan)
    return {"plan": plan, "in_process": in_process, "worker": worker}


def _ingest():
    from incident.config import get_settings
    from incident.incidents.ingest import ingest_payload
    from incident.incidents.repeats import RepeatCache
    from incident.logging import configure_logging
    from incident.rules import load_rules
    from incident.sharedstate import get_redis

    configure_logging(get_settings(), process="bench")
    rules, repeats = load_rules(None), RepeatCache(get_redis())
    return lambda raw: ingest_payload(raw, rules=rules, repeats=repeats)


def _timed(call, payloads) -> list[float]:
    out = []
    for raw in payloads:
        t0 = time.perf_counter_ns()
        call(raw)
        out.append((time.perf_counter_ns() - t0) / 1e3)
    return out


def _in_process(stack: Stack, n_alerts: int, plan: dict) -> dict:
    ingest = _ingest()
    receiver = f"bench-resend-{n_alerts}-{stack.run_id}"
    bodies = GroupBodies(n_alerts, receiver, prefix=group_id(receiver))
    warm = plan["warmup_calls"]
    _timed(ingest, [bodies.payload(i) for i in range(warm)])
    new_us = _timed(
        ingest, [bodies.payload(i) for i in range(warm, warm + plan["new_group_calls"])]
    )
    again = bodies.payload(0)  # applied during warm-up; its digest is cached
    if ingest(again) is not None:
        raise RuntimeError("a re-sent payload was applied again: the fast path did not take it")
    resend_us = _timed(ingest, [again] * plan["resend_calls"])
    new_med, resend_med = statistics.median(new_us), statistics.median(resend_us)
    return {
        "alerts_per_payload": n_alerts,
        "new_group_us_median": new_med,
        "new_group_us_p90": _p(new_us, 90),
        "resend_us_median": resend_med,
        "resend_us_p90": _p(resend_us, 90),
        "ratio": new_med / resend_med,
        "target_ratio": TARGET_RATIO,
        "target_met": new_med / resend_med >= TARGET_RATIO,
    }


def _worker_side(stack: Stack, plan: dict) -> dict:
    n, c = plan["worker_alerts_per_payload"], plan["worker_concurrency"]
    receiver = f"bench-resend-worker-{stack.run_id}"
    bodies = GroupBodies(n, receiver, prefix=group_id(receiver))
    stack.purge_queue()

    backlog.enqueue(lambda i: bodies.payload(10_000 + i), plan["worker_backlog"])
    new = backlog.drain_rate(stack, lambda: stack.worker(c), window=plan["worker_window_s"])
    new.pop("worker").stop()

    ingest = _ingest()
    applied = [bodies.payload(i) for i in range(20)]
    for raw in applied:
        ingest(raw)
    backlog.enqueue(lambda i: applied[i % len(applied)], plan["worker_resend_backlog"])
    resend = backlog.drain_rate(stack, lambda: stack.worker(c), window=plan["worker_window_s"])
    resend.pop("worker").stop()
    return {
        "worker_concurrency": c,
        "alerts_per_payload": n,
        "new_group_messages_per_s": new["messages_per_s"],
        "resend_messages_per_s": resend["messages_per_s"],
        "ratio": resend["messages_per_s"] / new["messages_per_s"],
        "new_group_drain": new,
        "resend_drain": resend,
    }


def _p(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(pct / 100 * len(ordered)))]
