"""Peak memory of the api and worker process trees while a bench runs.

Every ``interval`` seconds (0.2 s) each live ``incident api`` and ``incident
worker`` the stack started is measured as a tree: the process itself plus its
descendants (uvicorn's spawned workers; the Celery main process and its
prefork pool children). Per role the summary gives the peak of the trees
summed (several workers count together), the peak of the largest single tree,
and the largest single process. RSS counts pages a prefork child still shares
with its parent in both, so the tree sums overstate what the tree really holds;
PSS (shared pages split between their sharers, from smaps_rollup) is summed
beside it as the honest total.

Tree membership (one scan of /proc, a few ms) is refreshed every 2 s and PSS
(a page-table walk, ~5 ms for a 300 MiB process) every 5 s; RSS comes from
statm at every sample, about 10 µs a process.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import psutil

from bench.stack import Child, Stack

MiB = 1024 * 1024
ROLES = ("api", "worker")
SERIES_EVERY = 5.0


def role_of(child: Child) -> str | None:
    """``api`` or ``worker`` from the child's argv (``python -m incident <role> …``)."""
    args = child.proc.args
    role = args[3] if isinstance(args, list | tuple) and len(args) > 3 else None
    return role if role in ROLES else None


def describe(child: Child) -> str:
    """``worker c=2 -Q page``, ``api w=1``: which tree this is."""
    args = list(child.proc.args)[3:]
    parts = [args[0]]
    for flag, label in (("--workers", "w="), ("--concurrency", "c="), ("--queues", "-Q ")):
        if flag in args[:-1]:
            parts.append(label + args[args.index(flag) + 1])
    return " ".join(parts)


@dataclass
class _Peaks:
    sum_rss: int = 0
    sum_pss: int = 0
    tree_rss: int = 0
    process_rss: int = 0
    processes: int = 0
    first_sum_rss: int | None = None
    last_sum_rss: int = 0
    trees: dict[str, int] = field(default_factory=dict)  # description -> peak tree RSS
    # "worker c=2 -Q page: main" / ": pool 1", …: peak RSS of each process
    processes_rss: dict[str, int] = field(default_factory=dict)


class RssSampler(threading.Thread):
    """Samples the stack's live api and worker trees until ``stop()``."""

    def __init__(
        self, stack: Stack, interval: float = 0.2, refresh: float = 2.0, pss_every: float = 5.0
    ) -> None:
        super().__init__(daemon=True)
        self._stack = stack
        self.interval = interval
        self._refresh = refresh
        self._pss_every = pss_every
        self._pss_at = 0.0
        self._halt = threading.Event()
        self._trees: dict[int, list[psutil.Process]] = {}
        self._pss: dict[int, int] = {}
        self._refreshed = 0.0
        self._t0 = self._series_at = time.monotonic()
        self.series: list[list[float]] = []  # [t, api MiB, worker MiB] every SERIES_EVERY s
        self.peaks = {role: _Peaks() for role in ROLES}
        self.samples = 0
        self.elapsed = 0.0
        self.cost_s = 0.0  # CPU this thread spent measuring

    def run(self) -> None:
        started = self._t0 = time.monotonic()
        self._series_at = started - SERIES_EVERY
        cpu0 = time.thread_time()
        while True:
            self._sample()
            if self._halt.wait(self.interval):
                break
        self.elapsed = time.monotonic() - started
        self.cost_s = time.thread_time() - cpu0

    def stop(self) -> dict:
        self._halt.set()
        self.join()
        return self.summary()

    def _roots(self) -> list[tuple[str, Child]]:
        out = []
        for child in list(self._stack.children):
            role = role_of(child)
            if role is not None and child.proc.poll() is None:
                out.append((role, child))
        return out

    def _refresh_trees(self, roots: list[tuple[str, Child]]) -> None:
        """Each root and its descendants, from one scan of /proc."""
        children: dict[int, list[int]] = {}
        for proc in psutil.process_iter(["ppid"]):
            children.setdefault(proc.info["ppid"], []).append(proc.pid)
        trees = {}
        for _, child in roots:
            pids, todo = [], [child.proc.pid]
            while todo:
                pid = todo.pop()
                pids.append(pid)
                todo.extend(children.get(pid, ()))
            known = {p.pid: p for p in self._trees.get(child.proc.pid, [])}
            procs = []
            for pid in [pids[0], *sorted(pids[1:])]:
                try:
                    procs.append(known.get(pid) or psutil.Process(pid))
                except psutil.Error:
                    continue
            trees[child.proc.pid] = procs
        self._trees = trees

    def _sample(self) -> None:
        now = time.monotonic()
        roots = self._roots()
        if now - self._refreshed >= self._refresh or any(
            child.proc.pid not in self._trees for _, child in roots
        ):
            self._refreshed = now
            self._refresh_trees(roots)
        pss = now - self._pss_at >= self._pss_every
        if pss:
            self._pss_at = now
        sums = {role: [0, 0, 0] for role in ROLES}  # rss, pss, processes
        for role, child in roots:
            peaks = self.peaks[role]
            tree_rss = tree_pss = 0
            name = describe(child)
            for n, proc in enumerate(self._trees.get(child.proc.pid, ())):
                try:
                    if pss:  # smaps: a page-table walk, milliseconds for a big process
                        info = proc.memory_full_info()
                        self._pss[proc.pid] = getattr(info, "pss", info.rss)
                    else:  # statm: cheap
                        info = proc.memory_info()
                except psutil.Error:
                    continue
                tree_rss += info.rss
                tree_pss += self._pss.get(proc.pid, info.rss)
                sums[role][2] += 1
                peaks.process_rss = max(peaks.process_rss, info.rss)
                label = f"{name}: {'main' if n == 0 else f'child {n}'}"
                peaks.processes_rss[label] = max(peaks.processes_rss.get(label, 0), info.rss)
            sums[role][0] += tree_rss
            sums[role][1] += tree_pss
            peaks.tree_rss = max(peaks.tree_rss, tree_rss)
            peaks.trees[name] = max(peaks.trees.get(name, 0), tree_rss)
        for role, (rss, pss_sum, count) in sums.items():
            if not count:
                continue
            peaks = self.peaks[role]
            peaks.sum_rss = max(peaks.sum_rss, rss)
            peaks.sum_pss = max(peaks.sum_pss, pss_sum)
            peaks.processes = max(peaks.processes, count)
            if peaks.first_sum_rss is None:
                peaks.first_sum_rss = rss
            peaks.last_sum_rss = rss
        if now - self._series_at >= SERIES_EVERY:
            self._series_at = now
            self.series.append([round(now - self._t0), *(_mib(sums[role][0]) for role in ROLES)])
        self.samples += 1

    def summary(self) -> dict:
        out: dict = {
            "interval_s": self.interval,
            "samples": self.samples,
            "seconds": round(self.elapsed, 1),
            "sampler_cpu_s": round(self.cost_s, 2),
            "every_5s_rss_mib": {"columns": ["t", *ROLES], "rows": self.series},
        }
        for role, p in self.peaks.items():
            if p.first_sum_rss is None:
                out[role] = None
                continue
            out[role] = {
                "peak_rss_mib": _mib(p.sum_rss),  # all trees of this role together
                "peak_pss_mib": _mib(p.sum_pss),
                "peak_tree_rss_mib": _mib(p.tree_rss),  # the largest single tree
                "peak_process_rss_mib": _mib(p.process_rss),  # the largest single process
                "processes": p.processes,
                "first_rss_mib": _mib(p.first_sum_rss),
                "last_rss_mib": _mib(p.last_sum_rss),
                "trees_peak_rss_mib": {name: _mib(v) for name, v in p.trees.items()},
                "processes_peak_rss_mib": {
                    name: _mib(v) for name, v in sorted(p.processes_rss.items())
                },
            }
        return out


def _mib(n: int) -> float:
    return round(n / MiB, 1)
