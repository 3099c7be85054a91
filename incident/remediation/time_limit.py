"""A hard per-attempt deadline for code running in this process, by SIGALRM.

Celery's prefork pool runs tasks in each child's main thread, where a signal
can interrupt even a blocking socket read. Elsewhere (threads, the solo pool
under a thread, tests) there is no such timer, and Celery's own time limit is
what remains.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class AttemptTimedOut(BaseException):
    """Raised inside the limited code when its time is up.

    A BaseException, so that the ``except Exception`` of a remediation function
    cannot swallow it and run on past its deadline.
    """


def can_interrupt() -> bool:
    return threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise AttemptTimedOut in the block after ``seconds``, when ``can_interrupt()``.

    Whatever SIGALRM handler and timer were in place before are put back,
    the timer less the time spent here.
    """
    if not can_interrupt():
        yield
        return
    armed = True

    def on_alarm(signum: int, frame: object) -> None:
        # The alarm may land after the block ended, before it was disarmed.
        if armed:
            raise AttemptTimedOut(f"timed out after {seconds:g}s")

    started = time.monotonic()
    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    previous_delay, previous_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        # None: a handler installed from C, which Python cannot put back.
        signal.signal(
            signal.SIGALRM, previous_handler if previous_handler is not None else signal.SIG_DFL
        )
        if previous_delay > 0:
            remaining = previous_delay - (time.monotonic() - started)
            # Already due: fire it almost at once rather than never.
            signal.setitimer(signal.ITIMER_REAL, max(remaining, 0.001), previous_interval)


__all__ = ["AttemptTimedOut", "can_interrupt", "time_limit"]
