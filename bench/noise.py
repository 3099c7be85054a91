"""How much CPU processes outside the bench took while it ran.

The machine is shared: other people's tests or builds compete with the system
under test. Each bench section reports the mean number of cores used by
everything that is neither this process's descendants nor the PostgreSQL server.
"""

from __future__ import annotations

import os
import threading
import time

import psutil


class BackgroundLoad(threading.Thread):
    def __init__(self, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.postgres_pid: int | None = None
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._other_cpu = 0.0
        self._our_cpu = 0.0
        self._elapsed = 0.0

    def run(self) -> None:
        last_busy, last_ours, last_t = self._busy(), self._ours(), time.monotonic()
        while not self._halt.wait(self.interval):
            busy, ours, now = self._busy(), self._ours(), time.monotonic()
            ours_delta = sum(max(0.0, v - last_ours.get(pid, v)) for pid, v in ours.items())
            with self._lock:
                self._our_cpu += ours_delta
                self._other_cpu += max(0.0, (busy - last_busy) - ours_delta)
                self._elapsed += now - last_t
            last_busy, last_ours, last_t = busy, ours, now

    def mark(self) -> tuple[float, float, float]:
        with self._lock:
            return self._other_cpu, self._our_cpu, self._elapsed

    def since(self, mark: tuple[float, float, float]) -> dict:
        other, ours, elapsed = self.mark()
        span = elapsed - mark[2]
        if span <= 0:
            return {"other_cores": None, "bench_cores": None}
        return {
            "other_cores": round((other - mark[0]) / span, 2),
            "bench_cores": round((ours - mark[1]) / span, 2),
        }

    def stop(self) -> None:
        self._halt.set()
        self.join()

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return (
            t.user
            + t.nice
            + t.system
            + getattr(t, "irq", 0)
            + getattr(t, "softirq", 0)
            + getattr(t, "steal", 0)
        )

    def _ours(self) -> dict[int, float]:
        roots = [os.getpid()] + ([self.postgres_pid] if self.postgres_pid else [])
        out: dict[int, float] = {}
        for pid in roots:
            try:
                root = psutil.Process(pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for proc in procs:
                try:
                    times = proc.cpu_times()
                except psutil.NoSuchProcess:
                    continue
                out[proc.pid] = times.user + times.system
        return out


def _fixed_work() -> int:
    table = {}
    for i in range(20_000):
        table[str(i)] = i * i
    return sum(v for k, v in table.items() if k.endswith("7"))


def cpu_speed_index(seconds: float = 0.3) -> float:
    """Iterations/s of a fixed pure-Python workload, best of three.

    The host can be slowed from outside the VM in ways no counter here shows
    (steal time reads 0): comparing this index across runs tells whether the
    same code simply ran on a slower CPU.
    """
    best = 0.0
    for _ in range(3):
        n, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / 3:
            _fixed_work()
            n += 1
        best = max(best, n / elapsed)
    return round(best, 1)
