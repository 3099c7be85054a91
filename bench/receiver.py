"""Receiver: webhooks/s at saturation beside two references measured in the same run.

Three servers, each under uvicorn with the same number of processes:

* ``parse only``: a FastAPI app that reads the body as JSON (bench.reference);
* ``parse + LPUSH``: the same plus one Redis LPUSH of the body (redis.asyncio);
* ``incident api``: ours, auth on, publishing to the real Redis broker with no
  worker consuming (the queues are emptied after every run, so Redis stays small).

Each is driven by wrk with the same settings, every request a new group; the
servers take turns, round after round, so all see the same machine. CPU per
webhook is the server's processes (uvicorn's parent and workers) and, apart,
Redis's. Then latency open loop at half each one's saturation rate.
"""

from __future__ import annotations

import statistics
import time

import psutil

from bench import loadgen
from bench.payloads import GROUP_SLOT, GroupBodies, group_id
from bench.reference import QUEUE as REFERENCE_QUEUE
from bench.stack import WEBHOOK_TOKEN, ApiProcess, Stack

PATH = "/webhooks/alertmanager"
# Ours against "parse + LPUSH" (webhooks/s), and our CPU per webhook.
RATIO_TARGET = 0.6
CPU_TARGET_MS = 0.6
# name in the results -> the bench.reference app (None: `incident api`)
SERVERS = {"parse_only": "parse_only", "parse_lpush": "parse_and_lpush", "incident": None}
LABELS = {
    "parse_only": "FastAPI parse only (reference)",
    "parse_lpush": "FastAPI parse + one Redis LPUSH (reference)",
    "incident": "incident api",
}


def run(stack: Stack, *, quick: bool, wrk: str | None, processes: int = 2, sizes=(1, 10)) -> dict:
    plan = {
        "processes": processes,
        "saturation_runs": 1 if quick else 3,
        "saturation_s": 3 if quick else 10,
        "connections": 16,
        "latency_s": 3 if quick else 10,
        "latency_warmup_s": 1 if quick else 2,
        "latency_connections": 16,
        "cpu_per_webhook": "server: uvicorn's parent and worker processes; Redis: redis-server, "
        "apart (none when the bench's Redis is not its own)",
    }
    servers: dict[str, ApiProcess] = {}
    try:
        for name, app in SERVERS.items():
            servers[name] = stack.api(processes) if app is None else stack.reference(app, processes)
        for server in servers.values():
            server.wait_ready()
        results = [_one_size(stack, servers, n_alerts, plan, wrk) for n_alerts in sizes]
    finally:
        for server in servers.values():
            server.stop()
    return {"plan": plan, "generator": _generator_name(wrk), "sizes": results}


def _generator_name(wrk: str | None) -> str:
    if wrk:
        return "wrk -t1, a new group in every request (saturation) + python asyncio open loop (latency)"
    return (
        "python asyncio closed loop, one body (saturation; wrk unavailable) "
        "+ python asyncio open loop (latency)"
    )


def _one_size(stack: Stack, servers: dict[str, ApiProcess], n_alerts: int, plan: dict, wrk) -> dict:
    bodies = GroupBodies(n_alerts, "bench-receiver", prefix=group_id(f"receiver-{n_alerts}"))
    r = stack.redis()
    rounds: dict[str, list[dict]] = {name: [] for name in servers}
    for round_ in range(plan["saturation_runs"] + 1):
        for name, server in servers.items():
            target = loadgen.Target(server.host, server.port, PATH, WEBHOOK_TOKEN)
            seconds = 2 if round_ == 0 else plan["saturation_s"]  # round 0 warms up
            prefix = group_id(f"receiver-{n_alerts}-{name}-{round_}")
            measured = _measure(stack, server, target, bodies, plan, wrk, seconds, prefix)
            _purge(stack)
            if round_:
                rounds[name].append(measured)
    measures = {}
    for name, server in servers.items():
        runs = rounds[name]
        rps = statistics.median(run["rps"] for run in runs)
        target = loadgen.Target(server.host, server.port, PATH, WEBHOOK_TOKEN)
        start = 10_000_000
        latency = loadgen.open_loop(
            target, lambda i, start=start: bodies(start + i), rate=rps / 2,
            seconds=plan["latency_s"], warmup=plan["latency_warmup_s"],
            connections=plan["latency_connections"],
        ).summary()
        _purge(stack)
        measures[name] = {
            "label": LABELS[name],
            "saturation_rps_median": rps,
            "saturation_rps_runs": [run["rps"] for run in runs],
            "saturation_errors": sum(run["errors"] for run in runs),
            "server_cpu_ms_per_webhook": statistics.median(run["server_cpu_ms"] for run in runs),
            "redis_cpu_ms_per_webhook": _median_or_none([run["redis_cpu_ms"] for run in runs]),
            "queued_per_run": [run["queued"] for run in runs],
            "runs": runs,
            "latency_at_half": latency,
        }
    ours, reference = measures["incident"], measures["parse_lpush"]
    ratio = ours["saturation_rps_median"] / reference["saturation_rps_median"]
    return {
        "alerts_per_payload": n_alerts,
        "body_bytes": len(bodies(0)),
        "servers": measures,
        "ratio_to_parse_lpush": ratio,
        "ratio_target": RATIO_TARGET,
        "ratio_met": ratio >= RATIO_TARGET,
        "cpu_target_ms": CPU_TARGET_MS,
        "cpu_met": ours["server_cpu_ms_per_webhook"] <= CPU_TARGET_MS,
        "redis_peak_used_memory_mb": r.info("memory")["used_memory_peak"] / 2**20,
    }


def _measure(stack, server, target, bodies, plan, wrk, seconds, prefix: int) -> dict:
    redis_pid = stack.redis_pid
    before = _cpu_seconds(server.proc.pid), _process_cpu(redis_pid), time.monotonic()
    if wrk:
        result = loadgen.wrk_saturate(
            wrk, target, bodies.template, connections=plan["connections"], seconds=seconds,
            group_slot=GROUP_SLOT, group_prefix=prefix,
        )
    else:
        result = loadgen.python_saturate(
            target, bodies(0), connections=plan["connections"], seconds=seconds
        )
    server_cpu = _cpu_seconds(server.proc.pid) - before[0]
    redis_cpu = _process_cpu(redis_pid) - before[1] if redis_pid else None
    requests = max(1, result["requests"])
    return {
        **result,
        "queued": _queued(stack),
        "elapsed_s": time.monotonic() - before[2],
        "server_cpu_ms": 1e3 * server_cpu / requests,
        "server_cores": server_cpu / result["seconds"],
        "redis_cpu_ms": 1e3 * redis_cpu / requests if redis_cpu is not None else None,
    }


def _queued(stack: Stack) -> int:
    r = stack.redis()
    return sum(r.llen(key) for key in ("ingest", "page", REFERENCE_QUEUE))


def _purge(stack: Stack) -> None:
    stack.purge_all_queues()
    stack.redis().unlink(REFERENCE_QUEUE)


def _median_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _process_cpu(pid: int | None) -> float:
    if not pid:
        return 0.0
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return times.user + times.system


def _cpu_seconds(pid: int) -> float:
    """User+system CPU of a process and all its descendants (uvicorn's workers)."""
    total = 0.0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total
