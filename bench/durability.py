"""Broker durability's price: receiver saturation with the AOF fsynced every second vs always.

One `incident api` per policy, each on an embedded Redis of its own (append-only,
``appendfsync everysec`` or ``always``, the AOF on this machine's disk), driven to
saturation in turns (everysec, always, everysec, …) so both see the same machine;
medians per policy. No worker runs: the queues are emptied after every run.
"""

from __future__ import annotations

import statistics

import redis

from bench import loadgen
from bench.payloads import body
from bench.receiver import PATH
from bench.stack import ALL_QUEUE_KEYS, WEBHOOK_TOKEN, Stack
from incident.embedded import EmbeddedRedis

POLICIES = ("everysec", "always")


def run(stack: Stack, *, quick: bool, wrk: str | None) -> dict:
    plan = {"runs": 1 if quick else 5, "seconds": 3 if quick else 6, "connections": 32}
    servers = {
        policy: EmbeddedRedis(stack.workdir / f"redis-{policy}", options={"appendfsync": policy})
        for policy in POLICIES
    }
    apis = {}
    try:
        for policy, server in servers.items():
            url = server.start()
            apis[policy] = stack.api(
                1, env={"INCIDENT_BROKER_URL": url, "INCIDENT_REDIS_URL": url}, name=policy
            )
        for api in apis.values():
            api.wait_ready()
        data = body(1, receiver="bench-durability")
        rps: dict[str, list[float]] = {policy: [] for policy in POLICIES}
        errors = dict.fromkeys(POLICIES, 0)
        for round_ in range(plan["runs"] + 1):
            for policy in POLICIES:
                api = apis[policy]
                target = loadgen.Target(api.host, api.port, PATH, WEBHOOK_TOKEN)
                result = _saturate(wrk, target, data, plan, 2 if round_ == 0 else plan["seconds"])
                redis.Redis.from_url(servers[policy].url).unlink(*ALL_QUEUE_KEYS)
                if round_ == 0:
                    continue  # warm-up: connections, imports, pools
                rps[policy].append(result["rps"])
                errors[policy] += result["errors"]
    finally:
        for api in apis.values():
            api.stop()
        for server in servers.values():
            server.stop()
    medians = {policy: statistics.median(values) for policy, values in rps.items()}
    return {
        "plan": plan,
        "generator": "wrk" if wrk else "python asyncio closed loop (wrk unavailable)",
        "rps_runs": rps,
        "rps_median": medians,
        "errors": errors,
        "always_over_everysec": medians["always"] / medians["everysec"],
    }


def _saturate(wrk: str | None, target: loadgen.Target, data: bytes, plan: dict, seconds: float):
    if wrk:
        return loadgen.wrk_saturate(
            wrk, target, data, connections=plan["connections"], seconds=seconds
        )
    return loadgen.python_saturate(target, data, connections=plan["connections"], seconds=seconds)
