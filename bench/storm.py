"""Alert storm: 10,000 alerts in 60 s, as Alertmanager sends them, through the whole system.

The api and two workers (``incident worker --concurrency 2`` on every queue, and
``-Q page --concurrency 2`` beside it, as the README recommends) run with the
fake Slack and the fake PagerDuty of ``tests.fakes`` configured, exactly as in
the paging bench, and the built-in severity rules: ``critical`` + ``env=prod``
is SEV1, ``critical`` elsewhere SEV2 (both paged), ``warning``/``error`` SEV3,
``info`` SEV4.

The offer (``build_plan``, seeded, so every run offers the same storm): 2,000
groups holding 10,000 distinct alerts (1 to 60 per group, 5 on average); 1.5 %
of the groups SEV1, 2.5 % SEV2, 55 % SEV3 (1 % of all groups later gain a
critical alert and are raised to SEV2), 41 % SEV4. Each group's notifications
are what Alertmanager would send: its first notification (the whole group, or
for 40 % of groups only part of it), then the group gaining the rest in one or
two later notifications, identical copies from the HA peer (a quarter of the
notifications), an unchanged re-send later for 30 % of groups, and a
resolution for 40 % (all alerts for 30 %, some for 10 %). Every notification
carries the whole group as it stands, resolved alerts included. The
notifications, in the order of their nominal times, are POSTed open loop at one
steady rate over the 60 s (about 90 webhooks/s carrying about 167 new alerts/s
on average), each at its scheduled time whatever the answers, on 16 keep-alive
connections.

Before the offer, a few SEV1 and SEV4 webhooks (another receiver) warm every
worker process up and are left to settle; Slack and PagerDuty requests are
counted from the offer on. Then, bounded (120 s after the offer's scheduled
end), the bench waits until no ingest task waits or runs (``ingest drained``)
and until everything has settled: no Celery message waiting, reserved or
retrying, the Slack digest backlog empty and no ledger row of the storm's
incidents ``pending`` or ``sending``. When the ingest queue has not drained by
then, alerts not stored yet may still be waiting in it: the table gives the
lost-alert and incident counts without a verdict ("n/a, not drained").

Reported: webhooks accepted; incidents opened and their severities (from the
database); lost alerts (every fingerprint offered must be in exactly one
incident, with the status of its last notification); PagerDuty events
(triggers, resolves, distinct dedup_keys; pages missing; duplicate pages: a
group paged under more than one dedup_key); Slack calls by kind (parents,
thread replies, digests, chat.update) and their peak rates against Slack's
limits; queue depths; drain time; peak RSS of the api and worker trees
(``bench.rss``); warnings and errors in the api and worker logs. ``--quick``:
1,000 alerts in 200 groups over 10 s, 60 s of drain wait.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import re
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass

import orjson
from sqlalchemy import create_engine, text

from bench import backlog
from incident import keys
from bench.loadgen import Connection, Target, finish, percentile, request_bytes, run_loop
from bench.payloads import GroupBodies, group_id
from bench.rss import RssSampler
from bench.stack import WEBHOOK_TOKEN, Stack
from tests.fakes.pagerduty import DEFAULT_ROUTING_KEY, FakePagerDuty
from tests.fakes.slack import DEFAULT_TOKEN, FakeSlack

PATH = "/webhooks/alertmanager"
FULL = {"groups": 2000, "alerts": 10_000, "seconds": 60, "drain_wait_s": 120}
QUICK = {"groups": 200, "alerts": 1_000, "seconds": 10, "drain_wait_s": 60}
WORKERS = ((2, None), (2, "page"))
CONNECTIONS = 16
SEED = 20261122

# Groups by share: the labels of their alerts (the built-in rules classify them).
KINDS = (
    ("SEV1", 0.015, ("critical",), "prod"),
    ("SEV2", 0.025, ("critical",), "staging"),
    ("SEV3", 0.55, ("warning", "error"), "prod"),
    ("SEV4", 0.41, ("info",), "prod"),
)
RAISED_SHARE = 0.01  # of all groups: SEV3 groups gaining a critical (staging) alert -> SEV2
GAIN_SHARE = 0.4  # of groups with 2+ alerts: first sent in part, gaining the rest later
HA_COPY_SHARE = 0.25  # of notifications: the HA peer's identical copy, a moment later
REPEAT_SHARE = 0.3  # of groups: an unchanged re-send of the group later on
RESOLVE_SHARE = 0.3  # of groups: every alert resolves
PARTIAL_RESOLVE_SHARE = 0.1  # of groups: some alerts resolve, the rest keep firing
ALERTNAMES = ("HighErrorRate", "HighLatency", "PodCrashLooping", "DiskFilling", "NodeNotReady")

# Slack: chat.postMessage about one message a second per channel (short bursts
# allowed; incident's bucket: 1/s, burst 3); chat.update is Tier 3, 50+ a minute.
SLACK_POSTS_PER_S = 1.0
SLACK_BURST = 3
SLACK_UPDATES_PER_MIN = 50
GO_ZERO_TIME = "0001-01-01T00:00:00Z"
INGEST_TASK = b"incident.incidents.ingest_webhook"
_GROUP_IN_SUMMARY = re.compile(r"svc-([0-9a-f]{12})")
# An incident listed in a storm message: its console link, labelled "#id".
_LISTED = re.compile(r"/incidents/(\d+)\|#\d+>")
# Targets: every incident told (a parent, a digest line or a storm message) within
# 30 s of the storm's end, and no Slack call left 60 s after it.
TOLD_WITHIN_S = 30.0
QUIET_WITHIN_S = 60.0
# The burst: new SEV1 groups, one alert each, each mentioned within 60 s of its webhook.
BURST = {"groups": 200, "seconds": 12, "drain_wait_s": 120}
QUICK_BURST = {"groups": 40, "seconds": 3, "drain_wait_s": 60}
MENTION_WITHIN_S = 60.0


# ---------------------------------------------------------------------------- the offer


@dataclass
class Group:
    index: int
    gid: str  # 12 hex digits; the service label is svc-<gid>
    kind: str
    raised: bool
    size: int
    alertname: str


@dataclass
class Webhook:
    at: float  # nominal time in the storm (only the order is kept)
    seq: int
    group: int
    what: str  # new | gain | ha_copy | repeat | resolve | resolve_partial
    # (alert index, status, startsAt offset, endsAt offset or None) for every alert of the group
    alerts: tuple[tuple[int, str, float, float | None], ...]


def build_plan(n_groups: int, n_alerts: int, seconds: float, prefix: int, seed: int = SEED):
    """The groups and the ordered notifications of one storm (deterministic for a seed)."""
    rng = random.Random(seed)
    # Sizes: one alert each, the rest spread with a skew (a few big groups).
    sizes = [1] * n_groups
    weights = [rng.lognormvariate(0, 1) for _ in range(n_groups)]
    for g in rng.choices(range(n_groups), weights=weights, k=n_alerts - n_groups):
        sizes[g] += 1
    kinds: list[str] = []
    for name, share, _, _ in KINDS[:-1]:
        kinds += [name] * round(share * n_groups)
    kinds += [KINDS[-1][0]] * (n_groups - len(kinds))
    rng.shuffle(kinds)
    candidates = [g for g in range(n_groups) if kinds[g] == "SEV3" and sizes[g] >= 2]
    raised = set(rng.sample(candidates, min(len(candidates), round(RAISED_SHARE * n_groups))))
    groups = [
        Group(
            g, "%012x" % ((prefix << 32) | g), kinds[g], g in raised, sizes[g],
            ALERTNAMES[g % len(ALERTNAMES)],
        )
        for g in range(n_groups)
    ]  # fmt: skip

    T = seconds
    hooks: list[Webhook] = []
    seq = 0

    def emit(t: float, group: Group, what: str, state: dict) -> None:
        nonlocal seq
        alerts = tuple((i, *state[i]) for i in sorted(state))
        hooks.append(Webhook(t, seq, group.index, what, alerts))
        seq += 1

    for group in groups:
        t = rng.uniform(0, 0.8 * T)
        state: dict[int, tuple[str, float, float | None]] = {}
        if group.size >= 2 and (group.raised or rng.random() < GAIN_SHARE):
            steps = 1 if group.size == 2 else rng.choice((1, 2))
            cuts = sorted(rng.sample(range(1, group.size), steps)) + [group.size]
        else:
            cuts = [group.size]
        done = 0
        for step, upto in enumerate(cuts):
            if step:
                # Gains are never dropped (late ones are squeezed in before the end):
                # every alert of the plan is offered.
                t = max(t, min(t + rng.uniform(0.04, 0.1) * T, 0.995 * T))
            for i in range(done, upto):
                state[i] = ("firing", t - rng.uniform(30, 90), None)
            done = upto
            emit(t, group, "gain" if step else "new", state)
            if rng.random() < HA_COPY_SHARE and t + 0.02 * T < 0.995 * T:
                emit(t + rng.uniform(0.003, 0.02) * T, group, "ha_copy", state)
        if rng.random() < REPEAT_SHARE:
            later = t + rng.uniform(0.03, 0.1) * T
            if later < T:
                t = later
                emit(t, group, "repeat", state)
        r = rng.random()
        later = t + rng.uniform(0.03, 0.12) * T
        if r < RESOLVE_SHARE + PARTIAL_RESOLVE_SHARE and later < T:
            partial = r >= RESOLVE_SHARE and group.size >= 2
            which = (
                rng.sample(range(group.size), rng.randint(1, group.size - 1))
                if partial
                else range(group.size)
            )
            for i in which:
                state[i] = ("resolved", state[i][1], later)
            t = later
            emit(t, group, "resolve_partial" if partial else "resolve", state)
            if rng.random() < HA_COPY_SHARE and t + 0.02 * T < T:
                emit(t + rng.uniform(0.003, 0.02) * T, group, "ha_copy", state)
    hooks.sort(key=lambda h: (h.at, h.seq))
    # A group's notifications keep their order even where clipping made times equal.
    last: dict[int, int] = {}
    for h in hooks:
        assert last.get(h.group, -1) < h.seq, "a group's notifications out of order"
        last[h.group] = h.seq
    return groups, hooks


def alert_labels(group: Group, i: int) -> dict[str, str]:
    _, _, severities, env = next(k for k in KINDS if k[0] == group.kind)
    severity = severities[i % len(severities)]
    if group.raised and i == group.size - 1:
        severity, env = "critical", "staging"
    return {
        "alertname": group.alertname,
        "service": f"svc-{group.gid}",
        "instance": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:9100",
        "job": "node",
        "env": env,
        "severity": severity,
    }


def fingerprint(group: Group, i: int) -> str:
    return f"{group.gid}{i:04x}"


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def payload(receiver: str, group: Group, hook: Webhook, base: float) -> dict:
    alerts = []
    for i, status, starts, ends in hook.alerts:
        labels = alert_labels(group, i)
        alerts.append(
            {
                "status": status,
                "labels": labels,
                "annotations": {
                    "summary": f"{group.alertname} on {labels['instance']}",
                    "runbook_url": f"https://runbooks.example/{group.alertname}",
                },
                "startsAt": _iso(base + starts),
                "endsAt": _iso(base + ends) if ends is not None else GO_ZERO_TIME,
                "generatorURL": "http://prometheus:9090/graph?g0.expr=up",
                "fingerprint": fingerprint(group, i),
            }
        )
    group_labels = {"alertname": group.alertname, "service": f"svc-{group.gid}"}
    common = {
        k: v for k, v in alerts[0]["labels"].items() if all(a["labels"].get(k) == v for a in alerts)
    }
    return {
        "receiver": receiver,
        "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
        "alerts": alerts,
        "groupLabels": group_labels,
        "commonLabels": common,
        "commonAnnotations": {"runbook_url": f"https://runbooks.example/{group.alertname}"},
        "externalURL": "http://alertmanager:9093",
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{group.alertname}", service="svc-{group.gid}"}}',
        "truncatedAlerts": 0,
    }


# ---------------------------------------------------------------------------- the run


def run(stack: Stack, *, quick: bool) -> dict:
    size = QUICK if quick else FULL
    receiver = f"bench-storm-{stack.run_id}"
    groups, hooks = build_plan(size["groups"], size["alerts"], size["seconds"], group_id(receiver))
    plan = {
        **size,
        "offered_alerts_per_s": size["alerts"] / size["seconds"],
        "webhooks": len(hooks),
        "webhooks_per_s": len(hooks) / size["seconds"],
        "alert_objects": sum(len(h.alerts) for h in hooks),
        "notifications_by_kind": dict(Counter(h.what for h in hooks)),
        "groups_by_kind": dict(Counter(g.kind for g in groups)),
        "raised_groups": sum(g.raised for g in groups),
        "seed": SEED,
        "connections": CONNECTIONS,
        "api_workers": 1,
        "workers": [{"concurrency": c, "queues": q or "default"} for c, q in WORKERS],
        "rules": "built-in severity rules",
    }
    backlog.use_stack_in_process(stack)  # for Celery's ping of the workers
    engine = create_engine(stack.database_url, pool_size=1)
    with FakePagerDuty() as pagerduty, FakeSlack(channels=("storm",)) as slack:
        channel = slack.channel_id("storm")
        stack.purge_all_queues()
        # The token bucket and digest list of this channel id may be an earlier bench's.
        stack.redis().unlink(*(k + channel for k in _SLACK_KEYS))
        env = {
            "INCIDENT_PAGERDUTY_ROUTING_KEY": DEFAULT_ROUTING_KEY,
            "INCIDENT_PAGERDUTY_EVENTS_URL": pagerduty.url,
            "SSL_CERT_FILE": pagerduty.ca_path,
            "INCIDENT_SLACK_BOT_TOKEN": DEFAULT_TOKEN,
            "INCIDENT_SLACK_CHANNEL": channel,
            "INCIDENT_SLACK_API_URL": slack.url,
        }
        api = stack.api(plan["api_workers"])
        workers = [stack.worker(c, queues=q, env=env) for c, q in WORKERS]
        rss = RssSampler(stack)
        queues = _QueueSampler(stack, channel, engine)
        children = [api, *workers]
        try:
            api.wait_ready()
            target = Target(api.host, api.port, PATH, WEBHOOK_TOKEN)
            base = time.time()
            requests = [
                request_bytes(target, orjson.dumps(payload(receiver, groups[h.group], h, base)))
                for h in hooks
            ]
            warm_s = _warm_up(stack, engine, target, workers, f"{receiver}-warm")
            slack_mark, pd_mark = len(slack.requests), len(pagerduty.requests)
            pd_events_mark = len(pagerduty.events)
            rss.start()
            queues.start()
            posts, start = run_loop(_offer(target, requests, size["seconds"]))
            offer_end = start + size["seconds"]
            drain = _await_settled(stack, engine, receiver, channel, workers, offer_end, size)
            queues.stop()
            rss_summary = rss.stop()
            for child in children:
                child.check_alive()
            stored = _stored(engine, receiver)
            # Before stopping: SIGTERM to a process group makes Celery log its pool
            # children's exit as an error, which is the bench's doing, not the storm's.
            logs = {"api": _log_problems(api), "workers": [_log_problems(w) for w in workers]}
            slack_calls = slack.requests[slack_mark:]
            pd_requests = pagerduty.requests[pd_mark:]
            pd_events = pagerduty.events[pd_events_mark:]
            burst = _burst(stack, engine, target, slack, pagerduty, channel, workers,
                           f"{receiver}-burst", quick=quick)
        finally:
            if rss.is_alive():
                rss.stop()
            if queues.is_alive():
                queues.stop()
            for child in reversed(children):
                child.stop()
            stack.purge_all_queues()
            engine.dispose()
    return {
        "plan": plan,
        "warm_up_s": round(warm_s, 1),
        **_summary(
            groups,
            hooks,
            posts,
            start,
            stored,
            drain,
            queues,
            slack_calls,
            pd_requests,
            pd_events,
            size,
            offer_end,
        ),
        "burst": burst,
        "rss": rss_summary,
        "logs": logs,
    }


_SLACK_KEYS = (
    keys.SLACK_DIGEST_SCHEDULED, keys.SLACK_BUCKET, keys.SLACK_STORM, keys.SLACK_STORM_INCIDENTS,
    keys.SLACK_STORM_PARENTS, keys.SLACK_STORM_SCHEDULED, keys.SLACK_STORM_LOCK,
)
# Rows waiting for the channel's digest or its storm message.
_DIGEST_BACKLOG = text(
    "SELECT count(*) FROM notifications WHERE status = 'digested' "
    "AND (target = :c OR target = 'storm:' || :c)"
)


def _digest_backlog(engine, channel: str) -> int:
    """Ledger rows waiting for the channel's next Slack digest."""
    with engine.connect() as conn:
        return int(conn.scalar(_DIGEST_BACKLOG, {"c": channel}))


def _warm_up(stack, engine, target, workers, receiver: str, timeout: float = 90) -> float:
    """Every worker answers a ping; a few SEV1 and SEV4 webhooks are paged, posted
    and settled, so pool children have connected and built their clients; then the
    channel's token bucket is left to refill."""
    from incident.worker import app

    started = time.monotonic()
    deadline = started + timeout
    while True:
        for worker in workers:
            worker.check_alive()
        nodes = [node for reply in app.control.ping(timeout=0.5) for node in reply]
        if all(any(n.startswith(w.node_prefix) for n in nodes) for w in workers):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers did not answer a ping within {timeout:.0f}s")
    prefix = group_id(receiver)
    bodies = [
        GroupBodies(1, receiver, prefix=prefix, severities=("critical",)),
        GroupBodies(1, receiver, prefix=prefix + 1, severities=("info",)),
    ]
    n = 8
    for i in range(n):
        time.sleep(0.1)  # spread over the pool children of both workers
        request = urllib.request.Request(
            f"http://{target.host}:{target.port}{target.path}",
            data=bodies[i % 2](i),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {target.token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            if response.status != 202:
                raise RuntimeError(f"warm-up webhook answered {response.status}")
    r = stack.redis()
    while True:
        for worker in workers:
            worker.check_alive()
        with engine.connect() as conn:
            incidents, unsettled = conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM incidents WHERE receiver = :r), "
                    "(SELECT count(*) FROM notifications n JOIN incidents i ON i.id = n.incident_id "
                    " WHERE i.receiver = :r AND n.status IN ('pending', 'sending', 'digested'))"
                ),
                {"r": receiver},
            ).one()
        if incidents == n and unsettled == 0 and _quiet(r):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"warm-up notifications did not settle within {timeout:.0f}s")
        time.sleep(0.2)
    time.sleep(SLACK_BURST / SLACK_POSTS_PER_S + 0.5)  # a full bucket for the storm
    return time.monotonic() - started


@dataclass
class _Post:
    scheduled: float
    written: float | None = None
    done: float | None = None
    status: int | None = None


async def _offer(target: Target, requests: list[bytes], seconds: float):
    """Each request at its slot of a steady schedule, whatever the answers (open loop)."""
    loop = asyncio.get_running_loop()
    clock = time.monotonic
    pool: asyncio.Queue = asyncio.Queue()
    for conn in await asyncio.gather(*(Connection.open(target) for _ in range(CONNECTIONS))):
        pool.put_nowait(conn)
    start = clock() + 0.05
    posts = [_Post(start + i * seconds / len(requests)) for i in range(len(requests))]
    in_flight: set[asyncio.Task] = set()

    async def post(i: int) -> None:
        conn = await pool.get()
        record = posts[i]
        record.written = clock()
        try:
            if conn is None:
                conn = await Connection.open(target)
            record.status = await asyncio.wait_for(conn.exchange(requests[i]), 10)
            record.done = clock()
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            if conn is not None:
                conn.close()
            conn = None
        pool.put_nowait(conn)

    for i, record in enumerate(posts):
        delay = record.scheduled - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        task = loop.create_task(post(i))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    await finish(in_flight, pool)
    return posts, start


def _quiet(r) -> bool:
    """No Celery message waiting, reserved or held for a retry."""
    pipe = r.pipeline(transaction=False)
    for queue in _QueueSampler.QUEUES:
        pipe.llen(queue)
    pipe.hlen("unacked")
    return not any(pipe.execute())


def _ingest_pending(r) -> bool:
    """An ingest task still waits (ingest or page queue) or runs (unacknowledged)."""
    if r.llen("ingest"):
        return True
    if any(INGEST_TASK in message for message in r.lrange("page", 0, -1)):
        return True
    return any(INGEST_TASK in message for message in r.hvals("unacked"))


def _unsettled(engine, receiver: str) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT n.status, count(*) FROM notifications n "
                "JOIN incidents i ON i.id = n.incident_id "
                "WHERE i.receiver = :r AND n.status IN ('pending', 'sending', 'digested') "
                "GROUP BY n.status"
            ),
            {"r": receiver},
        ).all()
    return {str(status): int(n) for status, n in rows}


def _await_settled(stack, engine, receiver, channel, workers, offer_end, size) -> dict:
    r = stack.redis()
    deadline = offer_end + size["drain_wait_s"]
    ingest_drained = settled = None
    while True:
        for worker in workers:
            worker.check_alive()
        now = time.monotonic()
        if ingest_drained is None and not _ingest_pending(r):
            ingest_drained = max(0.0, now - offer_end)
        if ingest_drained is not None and _quiet(r) and not _unsettled(engine, receiver):
            settled = max(0.0, now - offer_end)
            break
        if now > deadline:
            break
        time.sleep(0.5)
    pipe = r.pipeline(transaction=False)
    for queue in _QueueSampler.QUEUES:
        pipe.llen(queue)
    pipe.hlen("unacked")
    left = dict(zip((*_QueueSampler.QUEUES, "unacked"), pipe.execute(), strict=True))
    left["slack_digest"] = _digest_backlog(engine, channel)
    return {
        "wait_limit_s": size["drain_wait_s"],
        "waited_s": round(time.monotonic() - offer_end, 1),
        "ingest_drained_s": _round(ingest_drained),
        "settled_s": _round(settled),
        "left_at_end": {**left, "ledger": _unsettled(engine, receiver)},
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class _QueueSampler(threading.Thread):
    """Queue depths (waiting), reserved messages and the Slack digest backlog, twice a second."""

    QUEUES = ("ingest", "page", "notify")
    FIELDS = (*QUEUES, "unacked", "slack_digest")

    def __init__(self, stack: Stack, channel: str, engine) -> None:
        super().__init__(daemon=True)
        self._redis = stack.redis()
        self._engine = engine
        self._channel = channel
        self._halt = threading.Event()
        self.samples: list[tuple[float, tuple[int, ...]]] = []

    def run(self) -> None:
        start = time.monotonic()
        while True:
            pipe = self._redis.pipeline(transaction=False)
            for queue in self.QUEUES:
                pipe.llen(queue)
            pipe.hlen("unacked")
            depths = (*pipe.execute(), _digest_backlog(self._engine, self._channel))
            self.samples.append((time.monotonic() - start, depths))
            if self._halt.wait(0.5):
                break

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def summary(self) -> dict:
        if not self.samples:
            return {}
        values = [v for _, v in self.samples]
        return {
            "max": {name: max(v[i] for v in values) for i, name in enumerate(self.FIELDS)},
            "max_waiting_total": max(sum(v[:3]) for v in values),
            # Every 5 s: [t, ingest, page, notify, unacked, slack_digest].
            "every_5s": [[round(t), *v] for t, v in self.samples[::10]],
        }


def _stored(engine, receiver: str) -> dict:
    with engine.connect() as conn:
        params = {"r": receiver}
        incidents = conn.execute(
            text(
                "SELECT id, key, severity, status, group_labels->>'service' AS service "
                "FROM incidents WHERE receiver = :r"
            ),
            params,
        ).all()
        alerts = conn.execute(
            text(
                "SELECT a.fingerprint, a.incident_id, a.status FROM alerts a "
                "JOIN incidents i ON i.id = a.incident_id WHERE i.receiver = :r"
            ),
            params,
        ).all()
        ledger = conn.execute(
            text(
                "SELECT n.channel, n.action, n.status, count(*) AS n, sum(n.attempts) AS attempts, "
                "count(*) FILTER (WHERE n.external_id LIKE 'digest:%') AS digested, "
                "count(*) FILTER (WHERE n.priority) AS priority "
                "FROM notifications n JOIN incidents i ON i.id = n.incident_id "
                "WHERE i.receiver = :r GROUP BY 1, 2, 3"
            ),
            params,
        ).all()
        paged_keys = (
            conn.execute(
                text(
                    "SELECT DISTINCT i.key FROM notifications n JOIN incidents i ON i.id = n.incident_id "
                    "WHERE i.receiver = :r AND n.channel = 'pagerduty' AND n.action = 'trigger'"
                ),
                params,
            )
            .scalars()
            .all()
        )
        timeline = conn.execute(
            text(
                "SELECT t.kind, count(*) FROM timeline_entries t "
                "JOIN incidents i ON i.id = t.incident_id WHERE i.receiver = :r GROUP BY 1"
            ),
            params,
        ).all()
    return {
        "incidents": incidents,
        "alerts": alerts,
        "ledger": ledger,
        "paged_keys": set(paged_keys),
        "timeline": dict(timeline),
    }


# ---------------------------------------------------------------------------- the figures


def _expected(groups: list[Group], hooks: list[Webhook], posts: list[_Post]) -> dict:
    """What the accepted notifications should have produced, group by group."""
    from incident.rules import Rules, Severity

    rules = Rules()
    last_state: dict[str, str] = {}
    worst: dict[int, Severity] = {}
    resolved: dict[int, bool] = {}
    for hook, post in zip(hooks, posts, strict=True):
        if post.status != 202:
            continue
        group = groups[hook.group]
        firing = []
        for i, status, _, _ in hook.alerts:
            last_state[fingerprint(group, i)] = status
            if status == "firing":
                firing.append(rules.classify(alert_labels(group, i)))
        if firing:
            current = worst.get(hook.group)
            worst[hook.group] = Severity.worst([*firing, *([current] if current else [])])
        resolved[hook.group] = not firing
    return {"last_state": last_state, "worst": worst, "resolved": resolved}


def _summary(
    groups, hooks, posts, start, stored, drain, queues, slack_calls, pd_requests, pd_events, size,
    offer_end,
):
    expected = _expected(groups, hooks, posts)
    by_gid = {g.gid: g for g in groups}
    accepted = sum(p.status == 202 for p in posts)
    latencies = sorted(p.done - p.scheduled for p in posts if p.done is not None)
    lags = sorted(p.written - p.scheduled for p in posts if p.written is not None)
    new_per_window: Counter = Counter()
    seen: set[tuple[int, int]] = set()
    for hook, post in zip(hooks, posts, strict=True):
        for i, *_ in hook.alerts:
            if (hook.group, i) not in seen:
                seen.add((hook.group, i))
                new_per_window[int((post.scheduled - start) // 10)] += 1
    offer = {
        "alerts": len(seen),
        "groups": len(groups),
        "webhooks": len(posts),
        "accepted": accepted,
        "non_202": sum(p.status is not None and p.status != 202 for p in posts),
        "failed": sum(p.status is None for p in posts),
        "seconds": size["seconds"],
        "webhooks_per_s": len(posts) / size["seconds"],
        "post_p50_ms": percentile(latencies, 50) * 1e3,
        "post_p99_ms": percentile(latencies, 99) * 1e3,
        "post_max_ms": (latencies[-1] if latencies else float("nan")) * 1e3,
        "send_lag_p99_ms": percentile(lags, 99) * 1e3,
        "new_alerts_per_10s": [new_per_window[w] for w in range(max(new_per_window) + 1)],
    }

    # Incidents and alerts, from the database.
    incidents = stored["incidents"]
    group_of_incident = {}
    incidents_per_group: Counter = Counter()
    severity_mismatch = status_mismatch = 0
    for row in incidents:
        group = by_gid.get((row.service or "").removeprefix("svc-"))
        group_of_incident[row.id] = group
        if group is None:
            continue
        incidents_per_group[group.index] += 1
        if expected["worst"].get(group.index) != row.severity:
            severity_mismatch += 1
        if expected["resolved"].get(group.index) != (row.status == "resolved"):
            status_mismatch += 1
    where: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for row in stored["alerts"]:
        where[row.fingerprint].append((row.incident_id, row.status))
    offered = expected["last_state"]
    lost = sum(1 for fp in offered if fp not in where)
    several = sum(1 for fp in offered if len({i for i, _ in where.get(fp, ())}) > 1)
    unexpected = sum(1 for fp in where if fp not in offered)
    state_mismatch = sum(
        1
        for fp, status in offered.items()
        if len(where.get(fp, ())) == 1 and where[fp][0][1] != status
    )
    expected_groups = set(expected["worst"])
    alerts = {
        "offered": len(offered),
        "stored": len(stored["alerts"]),
        "lost": lost,
        "in_several_incidents": several,
        "unexpected": unexpected,
        "final_state_mismatches": state_mismatch,
    }
    incident_figures = {
        "opened": len(incidents),
        "expected": len(expected_groups),
        "by_severity": dict(sorted(Counter(r.severity for r in incidents).items())),
        "expected_by_severity": dict(
            sorted(Counter(str(s) for s in expected["worst"].values()).items())
        ),
        "by_status": dict(Counter(r.status for r in incidents)),
        "expected_resolved": sum(expected["resolved"].values()),
        "groups_without_incident": sum(1 for g in expected_groups if not incidents_per_group[g]),
        "groups_with_several": sum(1 for n in incidents_per_group.values() if n > 1),
        "severity_mismatches": severity_mismatch,
        "status_mismatches": status_mismatch,
        "timeline": stored["timeline"],
    }

    # PagerDuty, as the fake received it.
    key_group = {row.key: group_of_incident.get(row.id) for row in incidents}
    actions: Counter = Counter()
    triggers_per_key: Counter = Counter()
    keys_per_group: dict[int, set[str]] = defaultdict(set)
    unknown = 0
    for event in pd_events:
        key, action = event.get("dedup_key"), event.get("event_action")
        if key not in key_group:
            unknown += 1
            continue
        actions[action] += 1
        if action == "trigger":
            triggers_per_key[key] += 1
            group = key_group[key]
            if group is not None:
                keys_per_group[group.index].add(key)
    paged_expected = {g for g, s in expected["worst"].items() if s.rank <= 2}
    paged = set(keys_per_group)
    resolved_paged = {g for g in paged_expected if expected["resolved"].get(g)}
    pd = {
        "requests": len(pd_requests),
        "rejected": len(pd_requests) - len(pd_events),
        "events": len(pd_events),
        "triggers": actions["trigger"],
        "resolves": actions["resolve"],
        "acknowledges": actions["acknowledge"],
        "distinct_keys_triggered": len(triggers_per_key),
        "paged_groups_expected": len(paged_expected),
        "resolves_expected": len(resolved_paged),
        "ledger_triggered_incidents": len(stored["paged_keys"]),
        "missing_pages": len(paged_expected - paged)
        + len(stored["paged_keys"] - set(triggers_per_key)),
        "unexpected_pages": len(paged - paged_expected),
        # One group paged as two PagerDuty alerts: two incidents (keys) for one problem.
        "duplicate_pages": sum(1 for keys in keys_per_group.values() if len(keys) > 1),
        # The same dedup_key triggered again (a severity raise, or a retried request):
        # PagerDuty folds these into the alert it has.
        "repeat_triggers_same_key": sum(n - 1 for n in triggers_per_key.values()),
        "unknown_keys": unknown,
    }

    # Slack, as the fake received it.
    methods = Counter(call.method for call in slack_calls)
    posts_at, updates_at = [], []
    kinds: Counter = Counter()
    for call in slack_calls:
        if call.method == "chat.postMessage":
            posts_at.append(call.at)
            if call.body.get("thread_ts"):
                kinds["replies"] += 1
            elif str(call.body.get("text", "")).startswith("Incident digest"):
                kinds["digests"] += 1
            elif _stamp(call.body).endswith(":summary"):
                kinds["storm_summaries"] += 1
            elif _stamp(call.body):
                kinds["storm_messages"] += 1
            else:
                kinds["parents"] += 1
        elif call.method == "chat.update":
            updates_at.append(call.at)
    ledger: dict = {}
    for row in stored["ledger"]:
        ledger.setdefault(row.channel, {}).setdefault(row.action, {})[row.status] = row.n
    slack_rows = [r for r in stored["ledger"] if r.channel == "slack"]
    span = (max(posts_at) - min(posts_at)) if len(posts_at) > 1 else 0.0
    slack = {
        "calls": dict(sorted(methods.items())),
        "post_parents": kinds["parents"],
        "post_replies": kinds["replies"],
        "post_digests": kinds["digests"],
        "post_storm_messages": kinds["storm_messages"],
        "post_storm_summaries": kinds["storm_summaries"],
        "chat_update": len(updates_at),
        "posts_max_1s": _max_in_window(posts_at, 1.0),
        "posts_max_10s": _max_in_window(posts_at, 10.0),
        "posts_max_60s": _max_in_window(posts_at, 60.0),
        "posts_mean_per_s": len(posts_at) / span if span else None,
        "updates_max_60s": _max_in_window(updates_at, 60.0),
        "updates_max_1s": _max_in_window(updates_at, 1.0),
        "limit_posts_per_s": SLACK_POSTS_PER_S,
        "limit_burst": SLACK_BURST,
        "limit_updates_per_min": SLACK_UPDATES_PER_MIN,
        "ledger_rows": sum(r.n for r in slack_rows),
        "ledger_rows_via_digest": sum(r.digested for r in slack_rows),
        "ledger_attempts": sum(r.attempts or 0 for r in slack_rows),
    }
    slack["posts_within_limit"] = (
        slack["posts_max_10s"] <= 10 * SLACK_POSTS_PER_S + SLACK_BURST
        and slack["posts_max_60s"] <= 60 * SLACK_POSTS_PER_S + SLACK_BURST
    )
    slack["updates_within_limit"] = slack["updates_max_60s"] <= SLACK_UPDATES_PER_MIN
    # Told, as Slack shows it: the first parent, digest line or storm message naming each.
    told_at = _told_at(slack_calls, {row.service.removeprefix("svc-"): row.id
                                      for row in incidents if row.service})
    ids = [row.id for row in incidents]
    untold = [i for i in ids if i not in told_at]
    calls_at = [c.at for c in slack_calls if c.method in ("chat.postMessage", "chat.update")]
    told = {
        "incidents": len(ids),
        "told": len(ids) - len(untold),
        "all_told_after_end_s": _round(max(told_at[i] for i in ids) - offer_end)
        if ids and not untold else None,
        "last_slack_call_after_end_s": _round(max(calls_at) - offer_end) if calls_at else None,
        "within_s": TOLD_WITHIN_S,
        "quiet_within_s": QUIET_WITHIN_S,
    }
    slack["told"] = told
    checks = {
        "all_accepted": accepted == len(posts),
        # Until then, unstored alerts and wrong states may only be waiting in the queue.
        "ingest_drained": drain["ingest_drained_s"] is not None,
        "one_incident_per_group": incident_figures["opened"] == incident_figures["expected"]
        and incident_figures["groups_with_several"] == 0
        and incident_figures["groups_without_incident"] == 0,
        "no_lost_alerts": lost == 0 and several == 0,
        "final_states": state_mismatch == 0,
        "no_missing_pages": pd["missing_pages"] == 0,
        "no_duplicate_pages": pd["duplicate_pages"] == 0,
        "slack_within_limits": slack["posts_within_limit"] and slack["updates_within_limit"],
        "settled": drain["settled_s"] is not None,
        "slack_told_within_30s": told["all_told_after_end_s"] is not None
        and told["all_told_after_end_s"] <= TOLD_WITHIN_S,
        "slack_quiet_within_60s": drain["settled_s"] is not None
        and (told["last_slack_call_after_end_s"] or 0) <= QUIET_WITHIN_S,
    }
    return {
        "offer": offer,
        "incidents": incident_figures,
        "alerts": alerts,
        "pagerduty": pd,
        "slack": slack,
        "ledger": ledger,
        "drain": drain,
        "queues": queues.summary(),
        "checks": checks,
        "target_met": all(checks.values()),
    }


def _max_in_window(times: list[float], width: float) -> int:
    """The most events in any window of ``width`` seconds."""
    times = sorted(times)
    best = first = 0
    for i, t in enumerate(times):
        while t - times[first] >= width:
            first += 1
        best = max(best, i - first + 1)
    return best


def _log_problems(child) -> dict:
    """Warnings and errors a process logged (JSON lines; anything else that looks like one)."""
    levels: Counter = Counter()
    events: Counter = Counter()
    try:
        lines = child.log_path.read_bytes().splitlines()
    except OSError:
        return {"unreadable": True}
    for line in lines:
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            level = str(record.get("level", "")).lower()
            event = str(record.get("event", ""))[:160]
        else:
            raw = line.decode(errors="replace")
            level = next((lv for lv in ("critical", "error", "warning") if lv.upper() in raw), "")
            if "Traceback" in raw:
                level = "error"
            event = raw[:160]
        if level in ("warning", "error", "critical", "exception"):
            levels[level] += 1
            events[(level, event)] += 1
    return {
        "warnings": levels["warning"],
        "errors": levels["error"] + levels["critical"] + levels["exception"],
        "top": [f"{n}x {lv}: {ev}" for (lv, ev), n in events.most_common(5)],
    }


def _json(value):
    """A Slack argument as the fake received it: JSON calls carry objects, form calls JSON text."""
    if isinstance(value, str):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
    return value


def _stamp(body: dict) -> str:
    """The storm stamp a storm message (or its summary) carries; '' for other messages."""
    metadata = _json(body.get("metadata")) or {}
    stamp = str((metadata.get("event_payload") or {}).get("stamp", ""))
    return stamp if stamp.startswith("storm:") else ""


def _told_at(slack_calls, incident_of_group: dict[str, int]) -> dict[int, float]:
    """When Slack first showed each incident: its parent, a digest line, a storm message."""
    told: dict[int, float] = {}
    for call in slack_calls:
        if call.method not in ("chat.postMessage", "chat.update"):
            continue
        body = call.body
        shown: set[int] = set()
        if call.method == "chat.postMessage" and not body.get("thread_ts"):
            payload = (_json(body.get("metadata")) or {}).get("event_payload") or {}
            if payload.get("incident_id") is not None:
                shown.add(int(payload["incident_id"]))
            if str(body.get("text", "")).startswith("Incident digest"):
                shown.update(incident_of_group[g] for g in _GROUP_IN_SUMMARY.findall(
                    orjson.dumps(_json(body.get("blocks"))).decode()) if g in incident_of_group)
        blocks = _json(body.get("blocks"))
        if blocks:
            shown.update(int(i) for i in _LISTED.findall(orjson.dumps(blocks).decode()))
        for incident_id in shown:
            told.setdefault(incident_id, call.at)
    return told


def _burst(stack, engine, target, slack, pagerduty, channel, workers, receiver: str, *,
           quick: bool) -> dict:
    """New SEV1 groups, one alert each, at a steady rate: each must be mentioned in Slack
    within a minute of its webhook, and paged once."""
    size = QUICK_BURST if quick else BURST
    bodies = GroupBodies(1, receiver, prefix=group_id(receiver), severities=("critical",))
    requests = [request_bytes(target, bodies(i)) for i in range(size["groups"])]
    time.sleep(SLACK_BURST / SLACK_POSTS_PER_S + 0.5)  # a full bucket
    slack_mark, pd_mark = len(slack.requests), len(pagerduty.events)
    posts, start = run_loop(_offer(target, requests, size["seconds"]))
    end = start + size["seconds"]
    drain = _await_settled(stack, engine, receiver, channel, workers, end, size)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, key, group_labels->>'service' AS service FROM incidents "
                 "WHERE receiver = :r"), {"r": receiver},
        ).all()
    incident_of_group = {row.service.removeprefix("svc-"): row.id for row in rows if row.service}
    calls = slack.requests[slack_mark:]
    told_at = _told_at(calls, incident_of_group)
    latencies, unmentioned = [], 0
    for i, post in enumerate(posts):
        incident_id = incident_of_group.get(bodies.group(i))
        if post.done is None or incident_id is None or incident_id not in told_at:
            unmentioned += 1
            continue
        latencies.append(told_at[incident_id] - post.done)
    latencies.sort()
    keys_ = {row.key for row in rows}
    triggers = Counter(e.get("dedup_key") for e in pagerduty.events[pd_mark:]
                       if e.get("event_action") == "trigger" and e.get("dedup_key") in keys_)
    posts_at = [c.at for c in calls if c.method == "chat.postMessage"]
    updates_at = [c.at for c in calls if c.method == "chat.update"]
    figures = {
        "groups": size["groups"],
        "seconds": size["seconds"],
        "accepted": sum(p.status == 202 for p in posts),
        "incidents": len(rows),
        "mentioned": len(latencies),
        "unmentioned": unmentioned,
        "mention_p50_s": _round(percentile(latencies, 50)) if latencies else None,
        "mention_max_s": _round(latencies[-1]) if latencies else None,
        "within_s": MENTION_WITHIN_S,
        "parents": sum(1 for c in calls if c.method == "chat.postMessage"
                       and not c.body.get("thread_ts") and not _stamp(c.body)),
        "storm_messages": sum(1 for c in calls if c.method == "chat.postMessage"
                              and _stamp(c.body) and not _stamp(c.body).endswith(":summary")),
        "chat_update": len(updates_at),
        "posts_max_10s": _max_in_window(posts_at, 10.0),
        "posts_max_60s": _max_in_window(posts_at, 60.0),
        "updates_max_60s": _max_in_window(updates_at, 60.0),
        "pagerduty_triggers": sum(triggers.values()),
        "paged_incidents": len(triggers),
        "drain": drain,
    }
    checks = {
        "all_accepted": figures["accepted"] == size["groups"],
        "all_mentioned_within_60s": unmentioned == 0 and figures["incidents"] == size["groups"]
        and latencies[-1] <= MENTION_WITHIN_S,
        "one_page_each": len(triggers) == len(rows) == size["groups"]
        and all(n == 1 for n in triggers.values()),
        "slack_within_limits": figures["posts_max_10s"] <= 10 * SLACK_POSTS_PER_S + SLACK_BURST
        and figures["posts_max_60s"] <= 60 * SLACK_POSTS_PER_S + SLACK_BURST
        and figures["updates_max_60s"] <= SLACK_UPDATES_PER_MIN,
    }
    return {**figures, "checks": checks, "target_met": all(checks.values())}
