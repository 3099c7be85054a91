"""Paging latency: a SEV1 webhook POSTed to the api → the PagerDuty trigger received.

The real api and workers talk to the fake PagerDuty (HTTPS, its CA trusted via
``SSL_CERT_FILE``) and the fake Slack of ``tests.fakes``, both served from this
process. Background load runs open loop for the whole measurement: new SEV3 and
SEV4 groups of 10 alerts each, so the ingest and notify queues (Slack openings,
token bucket, digests) have real work. SEV1s (one critical ``env=prod`` alert,
each a new group) are sent open loop on their own connections.

Both ends are ``time.monotonic()`` in this process: a SEV1's *scheduled* send
time (so a late generator counts against the system, not for it; its lag is
reported) and the fake's ``RecordedRequest.at`` when the trigger arrived. Each
trigger is matched to its webhook by the group id in the PagerDuty summary (the
incident title is ``HighErrorRate svc-<group>``) and its ``dedup_key`` checked
against the stored incident's key.

Worker layouts: ``one-node`` is the reference, a single Celery node on every
queue (``-Q`` all of them, ``--concurrency 2``), as ``incident worker`` ran before
it reserved a page node; ``default`` is ``incident worker`` exactly as shipped, without a
flag (a node on every queue with the default concurrency, and its reserved
``page`` node); ``dedicated`` adds ``incident worker -Q page --concurrency 2``
beside it, as the README suggests for paging on a bigger machine.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import urllib.request
from dataclasses import dataclass

from sqlalchemy import create_engine, text

from bench import backlog, loadgen
from bench.loadgen import Connection, percentile, request_bytes
from bench.payloads import GroupBodies, group_id
from bench.stack import WEBHOOK_TOKEN, Stack
from incident.queues import QUEUES
from tests.fakes.pagerduty import DEFAULT_ROUTING_KEY, FakePagerDuty
from tests.fakes.slack import DEFAULT_TOKEN, FakeSlack

PATH = "/webhooks/alertmanager"
# A worker: None for `incident worker` without a flag, else (concurrency, queues).
LAYOUTS = {
    # The reference: one node on every queue, as `incident worker` ran before it kept a
    # page node of its own; pages wait there for a pool process like any other task.
    "one-node": ((2, ",".join(QUEUES)),),
    "default": (None,),
    "dedicated": (None, (2, "page")),
}
TARGET_P99_MS = {"default": 1000.0, "dedicated": 300.0}
SEV1 = ("critical",)
SEV3 = ("warning", "error")
SEV4 = ("info",)
_GROUP_IN_SUMMARY = re.compile(r"svc-([0-9a-f]{12})")


def run(stack: Stack, *, quick: bool) -> dict:
    plan = {
        "background_payloads_per_s": 20,
        "background_alerts_per_payload": 10,
        "background_kinds": "new groups, alternately SEV3 (warning/error) and SEV4 (info)",
        "sev1_per_s": 2.0,
        "sev1_seconds": 8 if quick else 60,
        "background_lead_s": 3 if quick else 5,
        "background_tail_s": 3 if quick else 5,
        "page_wait_s": 30 if quick else 60,
        "api_workers": 1,
        "layouts": {name: [_describe(w) for w in spec] for name, spec in LAYOUTS.items()},
        "target_p99_ms": TARGET_P99_MS,
    }
    backlog.use_stack_in_process(stack)  # for Celery's ping of the workers
    engine = create_engine(stack.database_url, pool_size=1)
    with FakePagerDuty() as pagerduty, FakeSlack(channels=tuple(LAYOUTS)) as slack:
        api = stack.api(plan["api_workers"])
        api.wait_ready()
        target = loadgen.Target(api.host, api.port, PATH, WEBHOOK_TOKEN)
        try:
            runs = [
                _layout(stack, engine, target, pagerduty, slack, name, spec, plan)
                for name, spec in LAYOUTS.items()
            ]
        finally:
            api.stop()
            engine.dispose()
    return {"plan": plan, "runs": runs}


def _layout(stack, engine, target, pagerduty, slack, name, spec, plan) -> dict:
    stack.purge_all_queues()
    env = {
        "INCIDENT_PAGERDUTY_ROUTING_KEY": DEFAULT_ROUTING_KEY,
        "INCIDENT_PAGERDUTY_EVENTS_URL": pagerduty.url,
        "SSL_CERT_FILE": pagerduty.ca_path,
        "INCIDENT_SLACK_BOT_TOKEN": DEFAULT_TOKEN,
        # A channel per layout: its token bucket and digest start empty.
        "INCIDENT_SLACK_CHANNEL": slack.channel_id(name),
        "INCIDENT_SLACK_API_URL": slack.url,
    }
    workers = [
        stack.default_worker(env=env) if w is None else stack.worker(w[0], queues=w[1], env=env)
        for w in spec
    ]
    tag = f"bench-paging-{name}-{stack.run_id}"
    try:
        ready_s = _warm_up(target, pagerduty, workers, f"{tag}-warm")
        pages = GroupBodies(1, tag, prefix=group_id(tag), severities=SEV1)
        sev3 = GroupBodies(10, f"{tag}-bg", prefix=group_id(f"{tag}-bg3"), severities=SEV3)
        sev4 = GroupBodies(10, f"{tag}-bg", prefix=group_id(f"{tag}-bg4"), severities=SEV4)
        sampler = _QueueSampler(stack)
        sampler.start()
        sent, background = loadgen.run_loop(
            _drive(target, pages, lambda i: (sev3, sev4)[i % 2](i // 2), plan)
        )
        groups = {pages.group(r.index): r.index for r in sent if r.accepted}
        arrivals = _await_pages(pagerduty, groups, plan["page_wait_s"])
        sampler.stop()
        for worker in workers:
            worker.check_alive()
        stored = _stored_pages(engine, tag)
    finally:
        for worker in workers:
            worker.stop()
        stack.purge_all_queues()
    channel = env["INCIDENT_SLACK_CHANNEL"]
    slack_posts = sum(
        1 for r in slack.calls("chat.postMessage") if r.body.get("channel") == channel
    )
    return _summary(
        name, spec, sent, background, arrivals, groups, stored, sampler, ready_s, slack_posts
    )


def _describe(worker) -> dict:
    if worker is None:
        return {
            "command": "incident worker",
            "nodes": "celery@ on every queue (default concurrency), page@ on page (1 process)",
        }
    concurrency, queues = worker
    return {"command": f"incident worker -Q {queues} --concurrency {concurrency}"}


def _warm_up(target, pagerduty, workers, receiver: str, n: int = 8, timeout: float = 120) -> float:
    """Every worker answers a ping, then a few SEV1s are paged: pool children have
    connected and built their PagerDuty and Slack clients before the measurement."""
    from incident.worker import app

    started = time.monotonic()
    deadline = started + timeout
    while True:
        for worker in workers:
            worker.check_alive()
        replies = app.control.ping(timeout=0.5)
        nodes = [node for reply in replies for node in reply]
        prefixes = [p for w in workers for p in (w.node_prefixes or (w.node_prefix,))]
        if all(any(n.startswith(p) for n in nodes) for p in prefixes):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers did not answer a ping within {timeout:.0f}s")
    bodies = GroupBodies(1, receiver, prefix=group_id(receiver), severities=SEV1)
    for i in range(n):
        time.sleep(0.1)  # spread over the pool children of every worker
        request = urllib.request.Request(
            f"http://{target.host}:{target.port}{target.path}",
            data=bodies(i),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {target.token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            if response.status != 202:
                raise RuntimeError(f"warm-up webhook answered {response.status}")
    groups = {bodies.group(i): i for i in range(n)}
    while len(_triggers(pagerduty, groups)[0]) < n:
        for worker in workers:
            worker.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"warm-up pages did not reach PagerDuty within {timeout:.0f}s")
        time.sleep(0.1)
    return time.monotonic() - started


@dataclass
class _Post:
    index: int
    scheduled: float
    written: float | None = None
    status: int | None = None

    @property
    def accepted(self) -> bool:
        return self.status == 202


async def _drive(target, pages: GroupBodies, background, plan) -> tuple[list[_Post], dict]:
    """Background from t=0 to lead+seconds+tail, SEV1s from lead to lead+seconds, open loop."""
    clock = time.monotonic
    bg_rate, page_rate = plan["background_payloads_per_s"], plan["sev1_per_s"]
    lead, seconds = plan["background_lead_s"], plan["sev1_seconds"]
    start = clock() + 0.05
    bg_posts = [
        _Post(i, start + i / bg_rate)
        for i in range(int(bg_rate * (lead + seconds + plan["background_tail_s"])))
    ]
    page_posts = [_Post(i, start + lead + i / page_rate) for i in range(int(page_rate * seconds))]
    in_flight: set[asyncio.Task] = set()

    async def post(pool: asyncio.Queue, body: bytes, record: _Post) -> None:
        conn = await pool.get()
        record.written = clock()
        try:
            if conn is None:
                conn = await Connection.open(target)
            record.status = await asyncio.wait_for(conn.exchange(request_bytes(target, body)), 10)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            if conn is not None:
                conn.close()
            conn = None
        pool.put_nowait(conn)

    async def schedule(posts: list[_Post], body_for, connections: int) -> None:
        pool: asyncio.Queue = asyncio.Queue()
        for conn in await asyncio.gather(*(Connection.open(target) for _ in range(connections))):
            pool.put_nowait(conn)
        for record in posts:
            delay = record.scheduled - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.get_running_loop().create_task(
                post(pool, body_for(record.index), record)
            )
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        await loadgen.finish(in_flight, pool)

    await asyncio.gather(schedule(bg_posts, background, 8), schedule(page_posts, pages, 4))
    bg_accepted = sum(p.accepted for p in bg_posts)
    return page_posts, {
        "offered_payloads_per_s": bg_rate,
        "offered_alerts_per_s": bg_rate * plan["background_alerts_per_payload"],
        "seconds": lead + seconds + plan["background_tail_s"],
        "sent": len(bg_posts),
        "accepted": bg_accepted,
        "failed": len(bg_posts) - bg_accepted,
    }


def _triggers(pagerduty: FakePagerDuty, groups: dict[str, int]) -> tuple[dict, dict]:
    """First arrival (monotonic) and every dedup_key of the triggers for ``groups``."""
    first: dict[int, float] = {}
    keys: dict[int, list[str]] = {}
    for request in pagerduty.calls("/v2/enqueue"):
        if request.body.get("event_action") != "trigger":
            continue
        found = _GROUP_IN_SUMMARY.search((request.body.get("payload") or {}).get("summary", ""))
        if found and found.group(1) in groups:
            index = groups[found.group(1)]
            first.setdefault(index, request.at)
            keys.setdefault(index, []).append(request.body.get("dedup_key"))
    return first, keys


def _await_pages(pagerduty: FakePagerDuty, groups: dict[str, int], wait: float) -> dict:
    deadline = time.monotonic() + wait
    while True:
        first, keys = _triggers(pagerduty, groups)
        if len(first) == len(groups) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    time.sleep(1.0)  # a repeated trigger for the same page would arrive about now
    first, keys = _triggers(pagerduty, groups)
    return {"first": first, "keys": keys}


def _stored_pages(engine, receiver: str) -> dict[str, dict]:
    """The PagerDuty trigger ledger row of each SEV1 incident, by group id."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT i.key, i.title, n.status, n.attempts, n.created_at, n.claimed_at "
                "FROM notifications n JOIN incidents i ON i.id = n.incident_id "
                "WHERE i.receiver = :r AND n.channel = 'pagerduty' AND n.action = 'trigger'"
            ),
            {"r": receiver},
        ).all()
    out = {}
    for row in rows:
        found = _GROUP_IN_SUMMARY.search(row.title)
        if found:
            out[found.group(1)] = row._asdict()
    return out


def _summary(name, spec, sent, background, arrivals, groups, stored, sampler, ready_s, slack_posts):
    first, keys = arrivals["first"], arrivals["keys"]
    group_of = {index: group for group, index in groups.items()}
    # Wall clock ↔ monotonic, to place the ledger's timestamps between the two ends.
    offset = time.time() - time.monotonic()
    latencies, lags, stages = [], [], {"to_ingest": [], "to_claim": [], "to_pagerduty": []}
    key_mismatch = duplicates = 0
    for post in sent:
        if post.written is not None:
            lags.append(post.written - post.scheduled)
        if post.index not in first:
            continue
        arrived = first[post.index]
        latencies.append(arrived - post.scheduled)
        row = stored.get(group_of[post.index])
        if len(set(keys[post.index])) != 1 or row is None or keys[post.index][0] != row["key"]:
            key_mismatch += 1
        duplicates += len(keys[post.index]) - 1
        if row is not None and row["claimed_at"] is not None:
            created, claimed = row["created_at"].timestamp(), row["claimed_at"].timestamp()
            stages["to_ingest"].append(created - (post.scheduled + offset))
            stages["to_claim"].append(claimed - created)
            stages["to_pagerduty"].append(arrived + offset - claimed)
    latencies.sort()
    lags.sort()
    accepted = sum(p.accepted for p in sent)
    missing = accepted - len(latencies)
    p99 = percentile(latencies, 99) * 1e3
    target = TARGET_P99_MS.get(name)
    return {
        "layout": name,
        "workers": [_describe(w) for w in spec],
        "warm_up_s": round(ready_s, 1),
        "sev1_sent": len(sent),
        "sev1_accepted": accepted,
        "sev1_paged": len(latencies),
        "sev1_missing": missing,
        "duplicate_triggers": duplicates,
        "dedup_key_mismatches": key_mismatch,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p90_ms": percentile(latencies, 90) * 1e3,
        "p99_ms": p99,
        "max_ms": (latencies[-1] if latencies else float("nan")) * 1e3,
        "gen_lag_p99_ms": percentile(lags, 99) * 1e3,
        # Where the time went, from the ledger row (wall clock): POST → ingest task
        # running (api, ingest queue); → row claimed (commit, page queue wait); →
        # trigger received (claim transaction, HTTPS request).
        "stages_ms": {
            stage: {
                "p50": percentile(sorted(v), 50) * 1e3,
                "p99": percentile(sorted(v), 99) * 1e3,
            }
            for stage, v in stages.items()
        },
        "background": background,
        "queues": sampler.summary(),
        "slack_posts": slack_posts,
        "target_p99_ms": target,
        "target_met": None if target is None else bool(latencies)
        and p99 <= target
        and missing == 0
        and accepted == len(sent)
        and background["failed"] == 0,
    }


class _QueueSampler(threading.Thread):
    """LLEN of the ingest, page and notify queues twice a second."""

    QUEUES = ("ingest", "page", "notify")

    def __init__(self, stack: Stack) -> None:
        super().__init__(daemon=True)
        self._redis = stack.redis()
        self._halt = threading.Event()
        self.samples: list[tuple[int, ...]] = []

    def run(self) -> None:
        while True:
            pipe = self._redis.pipeline(transaction=False)
            for queue in self.QUEUES:
                pipe.llen(queue)
            self.samples.append(tuple(pipe.execute()))
            if self._halt.wait(0.5):
                break

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def summary(self) -> dict:
        return {
            queue: {"max": max(s[i] for s in self.samples), "last": self.samples[-1][i]}
            for i, queue in enumerate(self.QUEUES)
        }
