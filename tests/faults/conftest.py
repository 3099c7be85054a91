"""Servers the fault tests may stop, traffic and kills to put through the pipeline,
and reading what it made of them.

The shared test servers are never stopped: each module here gets its own
PostgreSQL and Redis, migrated and emptied before every test, and restarted
on the same data directory and port, so processes reconnect to the same URL.
"""

from __future__ import annotations

import os
import random
import json
import re
import shutil
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import psycopg
import pytest
import redis

from incident.embedded import EmbeddedPostgres, EmbeddedRedis
from incident.incidents.deadletters import parked
from incident.migrate import upgrade
from incident.worker.routes import QUEUES
from tests.conftest import (
    TABLES,
    WEBHOOK_TOKEN,
    ApiProcess,
    ChildProcess,
    WorkerProcess,
    _libpq,
    wait_for,
)
from tests.factories import alert
from tests.fakes.pagerduty import DEFAULT_ROUTING_KEY, FakePagerDuty
from tests.fakes.slack import DEFAULT_TOKEN as SLACK_TOKEN
from tests.fakes.slack import FakeSlack


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[EmbeddedPostgres]:
    """A migrated PostgreSQL of this module's own, to stop and start again."""
    # Not under pytest's 0700 tmp_path: as root, pgserver runs PostgreSQL as another user.
    home = Path(tempfile.mkdtemp(prefix="incident-fault-postgres-"))
    server = EmbeddedPostgres(home / "postgres")
    try:
        upgrade(server.start())
        yield server
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def own_redis() -> Iterator[EmbeddedRedis]:
    """A Redis (append-only) of this module's own, to stop and start again on its port."""
    home = Path(tempfile.mkdtemp(prefix="incident-fault-redis-"))
    server = EmbeddedRedis(home)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def own_env(
    incident_environment: dict[str, str], own_postgres: EmbeddedPostgres, own_redis: EmbeddedRedis
) -> dict[str, str]:
    """The run's environment pointed at this module's servers, emptied for the test."""
    with psycopg.connect(_libpq(own_postgres.url), autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
    redis.Redis.from_url(own_redis.url).flushdb()
    return {
        **incident_environment,
        "INCIDENT_DATABASE_URL": own_postgres.url,
        "INCIDENT_BROKER_URL": own_redis.url,
        "INCIDENT_REDIS_URL": own_redis.url,
    }


@contextmanager
def stopped(server: EmbeddedPostgres | EmbeddedRedis) -> Iterator[None]:
    """The server is down inside the block, and back on the same URL after it."""
    url = server.url
    server.stop()
    try:
        yield
    finally:
        assert server.start() == url


class BeatProcess(ChildProcess):
    """`incident beat`, its schedule file beside its log."""

    name = "beat"

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        super().__init__(
            [
                sys.executable, "-m", "incident", "beat",
                "--schedule", str(log_path.with_suffix(".schedule")), "--loglevel", "INFO",
            ],
            log_path,
            env,
        )


def kill_whole_worker(worker: WorkerProcess) -> None:
    """SIGKILL the worker's main process and its pool at once: nothing is put back."""
    os.killpg(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait(timeout=10)
    worker.stop()  # only closes its log now


# --- what the pipeline made of it -------------------------------------------


@dataclass(frozen=True)
class IncidentRow:
    id: int
    key: str
    title: str
    group_key: str
    severity: str
    status: str
    instances: tuple[str, ...]  # the `instance` label of each of its alerts
    fingerprints: tuple[str, ...]


def query(database_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(_libpq(database_url), connect_timeout=5) as conn:
        return conn.execute(sql, params).fetchall()


def incidents(database_url: str) -> list[IncidentRow]:
    rows = query(
        database_url,
        """SELECT i.id, i.key, i.title, g.group_key, i.severity, i.status,
                  coalesce(array_agg(a.labels->>'instance' ORDER BY a.id)
                           FILTER (WHERE a.id IS NOT NULL), '{}'),
                  coalesce(array_agg(a.fingerprint ORDER BY a.id)
                           FILTER (WHERE a.id IS NOT NULL), '{}')
           FROM incidents i JOIN alert_groups g ON g.id = i.group_id
           LEFT JOIN alerts a ON a.incident_id = i.id
           GROUP BY i.id, g.group_key ORDER BY i.id""",
    )
    return [IncidentRow(*row[:6], tuple(row[6]), tuple(row[7])) for row in rows]


def ledger(database_url: str) -> list[dict[str, Any]]:
    columns = ("id", "incident_id", "channel", "action", "status", "attempts", "external_id")
    rows = query(database_url, f"SELECT {', '.join(columns)} FROM notifications ORDER BY id")
    return [dict(zip(columns, row, strict=True)) for row in rows]


def broker_backlog(client: redis.Redis) -> dict[str, int]:
    """Messages waiting in each queue, and those delivered but not acknowledged."""
    backlog = {queue: client.llen(queue) for queue in QUEUES}
    backlog["unacked"] = client.hlen("unacked")
    return {name: n for name, n in backlog.items() if n}


def dead_letters(client: redis.Redis) -> list[dict[str, Any]]:
    return parked(client)


# --- traffic, and killing pool processes -------------------------------------

HOOK = {"Authorization": f"Bearer {WEBHOOK_TOKEN}", "Content-Type": "application/json"}
SEVERITY_LABELS = {
    "SEV1": {"severity": "critical", "env": "prod"},
    "SEV2": {"severity": "critical", "env": "staging"},
    "SEV3": {"severity": "warning"},
    "SEV4": {"severity": "info"},
}
PAGING = ("SEV1", "SEV2")


class Sender:
    """Posts webhooks to the receiver; every one must be accepted."""

    def __init__(self, api: ApiProcess) -> None:
        self.url = f"{api.url}/webhooks/alertmanager"
        self.client = httpx.Client(headers=HOOK, timeout=30)

    def send(self, body: dict[str, Any]) -> None:
        response = self.client.post(self.url, content=orjson.dumps(body))
        assert response.status_code == 202, response.text

    def close(self) -> None:
        self.client.close()


def group(index: int, severity: str, size: int = 3) -> list[dict[str, Any]]:
    """The alerts of one Alertmanager group (one service), each with its own instance."""
    service = f"svc-{index:03d}"
    return [
        alert(service=service, instance=f"{service}-{n}", **SEVERITY_LABELS[severity])
        for n in range(size)
    ]


def instances_of(alerts: list[dict[str, Any]]) -> set[str]:
    return {a["labels"]["instance"] for a in alerts}


def assert_one_incident_per_group(database_url: str, groups: int, sent: set[str]) -> list:
    """Every alert sent is in exactly one incident, and each group is exactly one incident."""
    found = incidents(database_url)
    placed = Counter(instance for i in found for instance in i.instances)
    assert set(placed) == sent, (
        f"lost: {sorted(sent - set(placed))[:10]}, unexpected: {sorted(set(placed) - sent)[:10]}"
    )
    assert [k for k, n in placed.items() if n > 1] == [], "an alert is in two incidents"
    assert len({i.group_key for i in found}) == len(found), "a group has two incidents"
    assert len(found) == groups
    for incident in found:
        # Every alert of an incident belongs to that incident's group (service).
        assert {name.rsplit("-", 1)[0] for name in incident.instances} == {
            incident.group_key.split('service="', 1)[1].split('"', 1)[0]
        }
    return found


def pool_processes(worker: WorkerProcess) -> list[psutil.Process]:
    return worker.pool_processes()


def pool_processes_talking_to(worker: WorkerProcess, port: int) -> list[psutil.Process]:
    """Pool processes with a connection open to ``port``: the one whose request is
    held, and any that merely keep an idle connection alive (killed all the same)."""
    talking = []
    for child in pool_processes(worker):
        try:
            connections = child.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        if any(c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
               for c in connections):
            talking.append(child)
    return talking


class PoolKiller:
    """SIGKILLs pool processes of the current worker as the stream goes on: any one
    of them, or the ones talking to the fake Slack or PagerDuty at the moment one
    of their requests has taken effect there but is not answered yet."""

    def __init__(self, fakes: dict[str, FakeSlack | FakePagerDuty], rng: random.Random) -> None:
        self.fakes = fakes
        self.rng = rng
        self.armed: str | None = None
        self.killed: dict[WorkerProcess, list[int]] = {}

    def kill(self, worker: WorkerProcess, how: str) -> None:
        if how == "any":
            victim = self.rng.choice(wait_for(lambda: pool_processes(worker), what="pool processes"))
            self._kill(worker, [victim])
        else:
            self.finish(worker)  # one held request at a time
            self.fakes[how].hold_reply_next(1, seconds=20)
            self.armed = how

    def poll(self, worker: WorkerProcess) -> None:
        """Fire an armed kill once its request is held (the stream keeps the traffic coming)."""
        if self.armed is None or not self.fakes[self.armed].held:
            return
        fake = self.fakes[self.armed]
        try:
            victims = wait_for(lambda: pool_processes_talking_to(worker, fake.port), timeout=10,
                               interval=0.02, what=f"a pool process talking to {self.armed}")
            self._kill(worker, victims)
        finally:
            fake.release_held()  # answered after the kill, to nobody
            self.armed = None

    def finish(self, worker: WorkerProcess) -> None:
        if self.armed is not None:
            wait_for(lambda: self.fakes[self.armed].held, timeout=60, interval=0.02,
                     what=f"a request to {self.armed} taken and its answer held")
            self.poll(worker)

    def _kill(self, worker: WorkerProcess, victims: list[psutil.Process]) -> None:
        for victim in victims:
            victim.send_signal(signal.SIGKILL)
        self.killed.setdefault(worker, []).extend(v.pid for v in victims)
        # Its node notices asynchronously: wait for it to say so, or a whole-worker
        # kill right after would leave no trace of this one.
        for victim in victims:
            wait_for(lambda pid=victim.pid: f"pid:{pid} exited with 'signal 9 (SIGKILL)'" in worker.log(),
                     timeout=20, what=f"the worker noticing pool process {victim.pid} killed")


DIGESTED_OPENING = re.compile(r"^\[SEV\d\] (.+): Opened as ", re.MULTILINE)


def slack_openings(fake_slack: FakeSlack, titles: dict[str, int]) -> tuple[Counter[int], Counter[int]]:
    """How often Slack heard each incident open: as its parent message (top-level,
    carrying the incident id), and as a line of a digest (top-level, carrying none)."""
    parents: Counter[int] = Counter()
    digest_lines: Counter[int] = Counter()
    for message in fake_slack.messages:
        if message.thread_ts is not None:
            continue
        event = (message.metadata or {}).get("event_payload") or {}
        if "incident_id" in event:
            parents[int(event["incident_id"])] += 1
        else:
            digest_lines.update(titles[t] for t in DIGESTED_OPENING.findall(message.text or ""))
    return parents, digest_lines


STORM_LISTING = re.compile(r"/incidents/(\d+)\|#\d+>")


def storm_listings(fake_slack: FakeSlack) -> dict[str, set[int]]:
    """For each storm message (by ts): the incidents it listed, in any of its versions."""
    listed: dict[str, set[int]] = {}
    for message in fake_slack.messages:
        stamp = str(((message.metadata or {}).get("event_payload") or {}).get("stamp", ""))
        if message.thread_ts is not None or not stamp.startswith("storm:") \
                or stamp.endswith(":summary"):
            continue
        versions = [json.dumps(message.blocks)] + [
            json.dumps(call.body.get("blocks")) for call in fake_slack.calls("chat.update")
            if call.body.get("ts") == message.ts
        ]
        listed[message.ts] = {int(i) for text in versions for i in STORM_LISTING.findall(text)}
    return listed


def storm_openings(fake_slack: FakeSlack, rows: list[dict[str, Any]]) -> Counter[int]:
    """Incidents whose opening a storm message told: the Slack opening's row names that
    message (``storm:<ts>``), and the message lists the incident."""
    listings = storm_listings(fake_slack)
    told: Counter[int] = Counter()
    for row in rows:
        external = row["external_id"] or ""
        if row["channel"] == "slack" and row["action"] == "trigger" \
                and external.startswith("storm:") \
                and row["incident_id"] in listings.get(external.removeprefix("storm:"), set()):
            told[row["incident_id"]] += 1
    return told


# --- a notifying pipeline: fake Slack and PagerDuty, two workers, an api ----------
# For test modules that set RULES and CHANNEL; a module may define its own.


@pytest.fixture(scope="module")
def fake_slack(request) -> Iterator[FakeSlack]:
    with FakeSlack(channels=(request.module.CHANNEL,)) as slack:
        yield slack


@pytest.fixture(scope="module")
def fake_pagerduty() -> Iterator[FakePagerDuty]:
    with FakePagerDuty() as pagerduty:
        yield pagerduty


@pytest.fixture(scope="module")
def pipeline_env(
    request, incident_environment, fake_slack, fake_pagerduty, tmp_path_factory
) -> dict[str, str]:
    rules = tmp_path_factory.mktemp("rules") / "rules.yml"
    rules.write_text(request.module.RULES)
    return {
        **incident_environment,
        "INCIDENT_SLACK_BOT_TOKEN": SLACK_TOKEN,
        "INCIDENT_SLACK_CHANNEL": fake_slack.channel_id(request.module.CHANNEL),
        "INCIDENT_SLACK_API_URL": fake_slack.url,
        "INCIDENT_PAGERDUTY_ROUTING_KEY": DEFAULT_ROUTING_KEY,
        "INCIDENT_PAGERDUTY_EVENTS_URL": fake_pagerduty.url,
        "SSL_CERT_FILE": fake_pagerduty.ca_path,
        "INCIDENT_RULES_FILE": str(rules),
    }


@pytest.fixture(scope="module")
def workers(pipeline_env, tmp_path_factory) -> Iterator[list[WorkerProcess]]:
    """Two worker processes of two pool processes each: retries land on any of them."""
    redis.Redis.from_url(pipeline_env["INCIDENT_BROKER_URL"]).flushdb()
    logs = tmp_path_factory.mktemp("workers")
    processes = [WorkerProcess(pipeline_env, logs / f"worker{n}.log") for n in (1, 2)]
    try:
        for process in processes:
            process.wait_ready()
        yield processes
    finally:
        for process in processes:
            process.stop()


@pytest.fixture(scope="module")
def api(pipeline_env, tmp_path_factory) -> Iterator[ApiProcess]:
    process = ApiProcess(pipeline_env, tmp_path_factory.mktemp("api") / "api.log")
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()
