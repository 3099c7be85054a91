"""One run of a periodic job at a time, across every beat and worker.

Two beat processes (an HA pair, or a second one started by mistake) each send
every job; a slow run can still be going when the next is due. Each job
therefore takes a Redis lock (redis-py's ``Lock``: a token checked by a Lua
script on release and extend) before it does anything. A run that finishes
keeps the lock for ``min_gap``, so the second beat's copy of the same tick,
arriving seconds later, finds it held and does nothing. A run whose worker dies
loses the lock when its ``timeout`` (at least the task's time limit) runs out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import redis
import structlog
from redis.exceptions import LockError

from incident import keys

log = structlog.get_logger(__name__)

PREFIX = keys.LOCK
T = TypeVar("T")


class AlreadyRunning(RuntimeError):
    """Another process holds this job's lock."""


@contextmanager
def exclusive(client: redis.Redis, job: str, *, timeout: float, min_gap: float = 0.0) -> Iterator[None]:
    """Hold ``job``'s lock for the block, or raise AlreadyRunning at once."""
    lock = client.lock(PREFIX + job, timeout=max(timeout, min_gap), blocking=False)
    if not lock.acquire():
        raise AlreadyRunning(job)
    try:
        yield
    finally:
        try:
            if min_gap > 0:
                lock.extend(min_gap, replace_ttl=True)
            else:
                lock.release()
        except LockError:
            # It expired under us: the run took longer than its timeout. The
            # next run may already hold a fresh lock; that one is not ours.
            log.warning("job lock expired before the job finished", job=job)


def run_once(
    client: redis.Redis, job: str, work: Callable[[], T], *, timeout: float, min_gap: float = 0.0
) -> T | None:
    """``work()`` under the job's lock; None (and a log line) when another run holds it."""
    try:
        with exclusive(client, job, timeout=timeout, min_gap=min_gap):
            return work()
    except AlreadyRunning:
        log.info("job already running or just ran elsewhere; skipped", job=job)
        return None
