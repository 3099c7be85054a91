"""Receiver: webhooks/s at saturation, then latency open-loop at half that rate.

A real ``incident api`` (auth on) publishing to the real Redis broker, with no
worker consuming: the queue is purged after every run so Redis stays small.
"""

from __future__ import annotations

import statistics
import time

import psutil

from bench import loadgen
from bench.payloads import body
from bench.stack import WEBHOOK_TOKEN, ApiProcess, Stack

PATH = "/webhooks/alertmanager"


def run(stack: Stack, *, quick: bool, wrk: str | None, api_workers=(1, 2), sizes=(1, 10)) -> dict:
    plan = {
        "saturation_runs": 1 if quick else 3,
        "saturation_s": 3 if quick else 6,
        "connections": 32,
        "latency_s": 5 if quick else 15,
        "latency_warmup_s": 1 if quick else 2,
        "latency_connections": 32,
    }
    results = []
    for workers in api_workers:
        api = stack.api(workers)
        api.wait_ready()
        try:
            for n_alerts in sizes:
                results.append(_one(stack, api, workers, n_alerts, plan, wrk))
        finally:
            api.stop()
    return {"plan": plan, "generator": _generator_name(wrk), "runs": results}


def _generator_name(wrk: str | None) -> str:
    return (
        "wrk (saturation) + python asyncio open loop (latency)"
        if wrk
        else (
            "python asyncio closed loop (saturation; wrk unavailable) + python asyncio open loop (latency)"
        )
    )


def _saturate(wrk: str | None, target: loadgen.Target, data: bytes, plan: dict, seconds: float):
    if wrk:
        return loadgen.wrk_saturate(
            wrk, target, data, connections=plan["connections"], seconds=seconds
        )
    return loadgen.python_saturate(target, data, connections=plan["connections"], seconds=seconds)


def _one(stack: Stack, api: ApiProcess, workers: int, n_alerts: int, plan: dict, wrk) -> dict:
    target = loadgen.Target(api.host, api.port, PATH, WEBHOOK_TOKEN)
    data = body(n_alerts, receiver="bench-receiver")
    r = stack.redis()
    _saturate(wrk, target, data, plan, 2)  # warm-up: connections, imports, pools
    stack.purge_queue()

    saturation, cpu, peak_memory = [], [], 0
    for _ in range(plan["saturation_runs"]):
        before = _cpu_seconds(api.proc.pid), time.monotonic()
        result = _saturate(wrk, target, data, plan, plan["saturation_s"])
        used, elapsed = _cpu_seconds(api.proc.pid) - before[0], time.monotonic() - before[1]
        queued = r.llen("ingest")
        peak_memory = max(peak_memory, r.info("memory")["used_memory"])
        stack.purge_queue()
        result["queued"] = queued
        saturation.append(result)
        cpu.append(
            {
                "api_cores": used / elapsed,
                "api_cpu_ms_per_request": 1e3 * used / max(1, result["requests"]),
            }
        )
    rps = statistics.median(s["rps"] for s in saturation)

    rate = rps / 2
    latency = loadgen.open_loop(
        target,
        lambda i: data,
        rate=rate,
        seconds=plan["latency_s"],
        warmup=plan["latency_warmup_s"],
        connections=plan["latency_connections"],
    ).summary()
    peak_memory = max(peak_memory, r.info("memory")["used_memory"])
    stack.purge_queue()
    return {
        "api_workers": workers,
        "alerts_per_payload": n_alerts,
        "body_bytes": len(data),
        "saturation_rps_median": rps,
        "saturation_rps_runs": [s["rps"] for s in saturation],
        "saturation_errors": sum(s["errors"] for s in saturation),
        "saturation_detail": saturation,
        "api_cpu": cpu,
        "latency_at_half": latency,
        "redis_peak_used_memory_mb": peak_memory / 2**20,
    }


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
