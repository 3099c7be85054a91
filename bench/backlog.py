"""A backlog in the ``ingest`` queue, and how fast workers drain it.

Messages are enqueued exactly as the receiver enqueues them (the same Celery task
through the same producer code), before any worker runs, so the drain rate is the
workers' own ceiling with nothing else competing for the CPU.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from bench.stack import Child, Stack


def use_stack_in_process(stack: Stack) -> None:
    """Point this process's incident settings (Celery producer, sessions) at the stack."""
    from incident.config import get_settings

    env = stack.env()
    for name in (
        "INCIDENT_DATABASE_URL",
        "INCIDENT_BROKER_URL",
        "INCIDENT_REDIS_URL",
        "INCIDENT_WEBHOOK_TOKEN",
        "INCIDENT_API_TOKEN",
        "INCIDENT_LOG_FORMAT",
        "INCIDENT_LOG_LEVEL",
    ):
        os.environ[name] = env[name]
    get_settings.cache_clear()


def enqueue(payload_for: Callable[[int], dict], count: int) -> float:
    """Put ``count`` ingest messages on the queue; return how long it took."""
    from incident.incidents.ingest import INGEST_TASK
    from incident.worker import app

    started = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for i in range(count):
            app.send_task(
                INGEST_TASK, kwargs={"payload": payload_for(i)}, kwargsrepr="bench",
                producer=producer,
            )
    return time.perf_counter() - started


def drain_rate(
    stack: Stack,
    start_worker: Callable[[], Child],
    *,
    window: float,
    warmup: float = 1.0,
    start_timeout: float = 60.0,
) -> dict:
    """Start a worker on the waiting backlog; messages/s it drains over ``window`` seconds.

    The first ``warmup`` seconds after it takes its first message are skipped (pool
    children connecting). Whatever is left afterwards is discarded; the worker is
    returned running, with its in-flight messages finished.
    """
    r = stack.redis()
    backlog = r.llen("ingest")
    worker = start_worker()
    deadline = time.monotonic() + start_timeout
    while r.llen("ingest") >= backlog:
        worker.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"worker took no message within {start_timeout:.0f}s")
        time.sleep(0.02)
    started = time.monotonic()
    time.sleep(warmup)
    t0, left0 = time.monotonic(), r.llen("ingest")
    t1, left1 = t0, left0
    while t1 - t0 < window and left1 > 0:
        time.sleep(0.1)
        t1, left1 = time.monotonic(), r.llen("ingest")
    emptied = left1 == 0
    r.unlink("ingest")
    wait_idle(stack)
    return {
        "backlog": backlog,
        "startup_s": started - (deadline - start_timeout),
        "window_s": t1 - t0,
        "messages": left0 - left1,
        "messages_per_s": (left0 - left1) / (t1 - t0) if t1 > t0 else float("nan"),
        "backlog_ran_out": emptied,
        "worker": worker,
    }


# The receiver queues webhooks with a SEV1/SEV2 alert on `page`, the rest on `ingest`.
WEBHOOK_QUEUES = ("ingest", "page")
# What a run's webhooks give the workers to do: the webhooks, then their notifications.
WORKER_QUEUES = ("ingest", "page", "notify")


def waiting_webhooks(r, queues: tuple[str, ...] = WEBHOOK_QUEUES) -> int:
    return sum(r.llen(queue) for queue in queues)


def wait_idle(
    stack: Stack, timeout: float = 60.0, *, queues: tuple[str, ...] = WEBHOOK_QUEUES
) -> bool:
    """Wait until no message of ``queues`` waits, and none is being worked on."""
    r = stack.redis()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if waiting_webhooks(r, queues) == 0 and r.hlen("unacked") == 0:
            return True
        time.sleep(0.1)
    return False


def drop_waiting(stack: Stack, queues: tuple[str, ...]) -> int:
    """Drop the messages waiting in ``queues`` (not those a worker holds); how many."""
    r = stack.redis()
    pipe = r.pipeline()
    for queue in queues:
        pipe.llen(queue)
    pipe.unlink(*queues)
    return sum(pipe.execute()[: len(queues)])
