"""Processes die and servers go away under real traffic; no accepted alert is lost,
none is counted twice, and nobody is told twice.

Each test has a PostgreSQL and a Redis of its module's own (tests/faults/conftest.py),
so stopping them leaves the rest of the suite alone.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import ApiProcess, WorkerProcess, wait_for
from tests.factories import payload
from tests.faults.conftest import (
    PAGING,
    BeatProcess,
    PoolKiller,
    Sender,
    assert_one_incident_per_group,
    broker_backlog,
    dead_letters,
    group,
    incidents,
    instances_of,
    kill_whole_worker,
    ledger,
    pool_processes_talking_to,
    slack_openings,
    stopped,
    storm_openings,
)
from tests.fakes.pagerduty import DEFAULT_ROUTING_KEY, FakePagerDuty
from tests.fakes.slack import DEFAULT_TOKEN, FakeSlack
from tests.test_alertmanager import AlertmanagerProcess, prometheus_alert

pytestmark = pytest.mark.faults

# Escalation timers far away: these tests count openings, not escalations.
RULES = """
escalation:
  SEV1: {pagerduty: critical, slack: true, ack_timeout: 1h}
  SEV2: {pagerduty: error, slack: true, ack_timeout: 1h}
  SEV3: {slack: true}
  SEV4: {slack: true}
maintenance:
  backup: {schedule: "0 3 29 2 *"}
"""


def _stop_all(*processes) -> None:
    for process in processes:
        if process is not None:
            process.stop()


# --- workers SIGKILLed in the middle of a stream ----------------------------

GROUPS = 100
SEVERITY_CYCLE = ("SEV1", "SEV2", "SEV3", "SEV3", "SEV4")
# After how many posted webhooks each pool process is killed, and how it is picked.
POOL_KILLS = {
    12: "any", 30: "pagerduty", 45: "slack", 60: "any", 80: "any",
    125: "pagerduty", 140: "any", 160: "slack", 180: "any", 200: "any",
}
WHOLE_WORKER_KILL = 100
VISIBILITY_TIMEOUT = 120  # the setting's minimum


def kill_stream(rng: random.Random) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
    """Webhooks as Alertmanager would send them: each group's first flush with two
    alerts, a second flush a little later with the third, and for every third
    group the second flush repeated (a re-send, or the other HA replica)."""
    groups = [group(i, SEVERITY_CYCLE[i % len(SEVERITY_CYCLE)]) for i in range(GROUPS)]
    timed: list[tuple[float, dict[str, Any]]] = []
    for i, alerts in enumerate(groups):
        at = i * 0.25
        timed.append((at, payload(*alerts[:2])))
        timed.append((at + 3 + rng.random(), payload(*alerts)))
        if i % 3 == 0:
            timed.append((at + 6 + rng.random(), payload(*alerts)))
    timed.sort(key=lambda item: item[0])
    return [body for _, body in timed], groups


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    with FakeSlack(channels=("incidents",)) as slack:
        yield slack


@pytest.fixture
def fake_pagerduty() -> Iterator[FakePagerDuty]:
    with FakePagerDuty() as pagerduty:
        yield pagerduty


@pytest.fixture
def notify_env(own_env, fake_slack, fake_pagerduty, tmp_path) -> dict[str, str]:
    rules = tmp_path / "rules.yml"
    rules.write_text(RULES)
    return {
        **own_env,
        "INCIDENT_RULES_FILE": str(rules),
        "INCIDENT_SLACK_BOT_TOKEN": DEFAULT_TOKEN,
        "INCIDENT_SLACK_CHANNEL": fake_slack.channel_id("incidents"),
        "INCIDENT_SLACK_API_URL": fake_slack.url,
        "INCIDENT_PAGERDUTY_ROUTING_KEY": DEFAULT_ROUTING_KEY,
        "INCIDENT_PAGERDUTY_EVENTS_URL": fake_pagerduty.url,
        "SSL_CERT_FILE": fake_pagerduty.ca_path,
        # A SIGKILLed worker's messages come back this long after their delivery.
        "INCIDENT_BROKER_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
        # Beat re-sends ledger rows that a crash left behind (after two minutes).
        "INCIDENT_ESCALATION_POLL_SECONDS": "2",
    }


@pytest.mark.timeout(420)
def test_workers_sigkilled_mid_stream_lose_nothing_and_tell_nobody_twice(
    notify_env, own_postgres, own_redis, fake_slack, fake_pagerduty, tmp_path
):
    rng = random.Random(20261122)
    broker = redis.Redis.from_url(own_redis.url)
    webhooks, groups = kill_stream(rng)
    api = first = second = third = beat = sender = None
    try:
        api = ApiProcess(notify_env, tmp_path / "api.log")
        first = WorkerProcess(notify_env, tmp_path / "worker-1.log", concurrency=3)
        beat = BeatProcess(notify_env, tmp_path / "beat.log")
        api.wait_ready()
        first.wait_ready()
        sender = Sender(api)
        killer = PoolKiller({"slack": fake_slack, "pagerduty": fake_pagerduty}, rng)
        current, killed_at = first, 0.0
        restored_tags: set[bytes] = set()
        for n, body in enumerate(webhooks):
            sender.send(body)
            time.sleep(0.05)
            killer.poll(current)
            if n in POOL_KILLS:
                killer.kill(current, POOL_KILLS[n])
            if n == WHOLE_WORKER_KILL:
                killer.finish(first)
                # Messages it holds (running, prefetched, waiting for a countdown)
                # are only in Redis's unacked set once it is gone.
                wait_for(lambda: broker.hlen("unacked") > 0, timeout=30,
                         what="the worker holding unacknowledged messages")
                kill_whole_worker(first)
                killed_at = time.time()
                restored_tags = set(broker.hkeys("unacked"))
                second = WorkerProcess(notify_env, tmp_path / "worker-2.log", concurrency=3)
                second.wait_ready()
                current = second
        killer.finish(current)
        assert restored_tags, "the killed worker held no message"

        # kombu hands out a dead consumer's messages again once they are older
        # than the visibility timeout, when a consumer starts (and every ~100 s).
        time.sleep(max(0.0, killed_at + VISIBILITY_TIMEOUT + 3 - time.time()))
        third = WorkerProcess(notify_env, tmp_path / "worker-3.log", concurrency=2)
        third.wait_ready()
        wait_for(lambda: not restored_tags & set(broker.hkeys("unacked")), timeout=30,
                 what="the killed worker's messages restored to their queues")

        sent = set().union(*(instances_of(g) for g in groups))

        def settled() -> bool:
            for process in (api, second, third, beat):
                process.check_alive()
            rows = ledger(own_postgres.url)
            return (
                not broker_backlog(broker)
                and sum(len(i.instances) for i in incidents(own_postgres.url)) >= len(sent)
                and rows and all(r["status"] == "sent" for r in rows)
            )

        try:
            wait_for(settled, timeout=150, interval=1, what="every webhook and notification done")
        except AssertionError as exc:
            stuck = [r for r in ledger(own_postgres.url) if r["status"] != "sent"]
            raise AssertionError(
                f"{exc}: backlog {broker_backlog(broker)}, unsent ledger rows {stuck[:10]}"
            ) from None

        found = assert_one_incident_per_group(own_postgres.url, GROUPS, sent)
        assert all(i.status == "triggered" for i in found)

        # The kills happened, and some hit a task at work.
        assert sum(len(pids) for pids in killer.killed.values()) >= len(POOL_KILLS)
        for worker, pids in killer.killed.items():
            for pid in pids:
                assert f"pid:{pid} exited with 'signal 9 (SIGKILL)'" in worker.log()
        lost_tasks = first.log().count("WorkerLostError") + second.log().count("WorkerLostError")
        assert lost_tasks >= 1

        rows = ledger(own_postgres.url)
        by_id = {i.id: i for i in found}

        # Slack: every opening told exactly once, as a parent message, a digest
        # line or a line of the channel's storm message, when the stream outran
        # the channel's rate limit; a page has its own parent or is in the storm
        # message, never in a digest.
        parents, in_digests = slack_openings(fake_slack, {i.title: i.id for i in found})
        stormed = storm_openings(fake_slack, rows)
        assert {i: n for i, n in parents.items() if n > 1} == {}, "two parent messages"
        told = {i: parents[i] + in_digests[i] + stormed[i] for i in by_id}
        assert {i: n for i, n in told.items() if n != 1} == {}, "an opening told twice"
        assert {i.id for i in found if i.severity in PAGING} <= set(parents) | set(stormed)
        assert set(parents) | set(in_digests) | set(stormed) == set(by_id), (
            "an incident Slack never heard of"
        )
        assert not {i for i in in_digests if by_id[i].severity in PAGING}

        # PagerDuty: triggers only, each under the key of an incident that pages,
        # every paging incident triggered. A trigger repeated under the same
        # dedup_key (a pool process killed after PagerDuty took it) opens no
        # second alert there; it may only come from a delivery that was retried.
        events = fake_pagerduty.events
        assert {e["event_action"] for e in events} == {"trigger"}
        triggered = Counter(e["dedup_key"] for e in events)
        assert set(triggered) == {i.key for i in found if i.severity in PAGING}
        pager_rows = {by_id[r["incident_id"]].key: r for r in rows if r["channel"] == "pagerduty"}
        assert set(pager_rows) == set(triggered)
        for key, times in triggered.items():
            assert times <= pager_rows[key]["attempts"], (key, times, pager_rows[key])

        assert dead_letters(broker) == []
    finally:
        if sender is not None:
            sender.close()
        _stop_all(beat, third, second, first, api)



class ToldTwice(AssertionError):
    """Slack heard of one opening twice, or a digest is recorded as a parent message."""


@pytest.mark.timeout(180)
def test_a_digest_flush_killed_after_slack_stored_it_tells_nobody_twice(
    notify_env, own_postgres, own_redis, fake_slack, tmp_path
):
    broker = redis.Redis.from_url(own_redis.url)
    slack_seen, messages_seen = len(fake_slack.requests), len(fake_slack.messages)
    api = worker = beat = sender = None
    try:
        api = ApiProcess(notify_env, tmp_path / "api.log")
        worker = WorkerProcess(notify_env, tmp_path / "worker.log", concurrency=2)
        beat = BeatProcess(notify_env, tmp_path / "beat.log")
        api.wait_ready()
        worker.wait_ready()
        sender = Sender(api)
        # Eight SEV3 openings at once: the channel's burst posts the first
        # parents, the rest wait in one digest.
        for i in range(8):
            sender.send(payload(*group(i, "SEV3")[:2]))

        def held_digest() -> bool:
            """Hold the next Slack request; true once the held one is the digest."""
            if not fake_slack.held:
                fake_slack.hold_reply_next(1, seconds=30)
                return False
            newest = max(fake_slack.messages, key=lambda m: float(m.ts))
            if "incident_id" in ((newest.metadata or {}).get("event_payload") or {}):
                fake_slack.release_held()  # a parent: let it through, hold the next
                return False
            return True

        try:
            wait_for(held_digest, timeout=60, interval=0.02, what="the digest stored, reply held")
            victims = wait_for(lambda: pool_processes_talking_to(worker, fake_slack.port),
                               timeout=10, interval=0.02, what="the flushing pool process")
            for victim in victims:
                victim.send_signal(signal.SIGKILL)
        finally:
            fake_slack.release_held()
        # The flush comes back under its own task id, finds the digest Slack
        # stored by one look at the channel's history, and marks its rows sent:
        # no sweeper, and no row told again on its own.
        wait_for(lambda: all(r["status"] == "sent" for r in ledger(own_postgres.url))
                 and not broker_backlog(broker), timeout=60, interval=0.5,
                 what="the redelivered flush finishing the digest's rows")
        digests = [m for m in fake_slack.messages[messages_seen:]
                   if "covers" in (((m.metadata or {}).get("event_payload")) or {})]
        assert len(digests) == 1, f"{len(digests)} digests posted"
        lookups = [r for r in fake_slack.requests[slack_seen:]
                   if r.method.startswith("conversations.")]
        assert len(lookups) <= 2, f"row-by-row recovery: {len(lookups)} history lookups"

        found = incidents(own_postgres.url)
        assert len(found) == 8
        parents, in_digests = slack_openings(fake_slack, {i.title: i.id for i in found})
        told = parents + in_digests
        if any(told[i.id] != 1 for i in found):
            raise ToldTwice(f"openings told per incident: {dict(told)}")
        misfiled = [r for r in ledger(own_postgres.url)
                    if r["incident_id"] not in parents
                    and not str(r["external_id"]).startswith("digest:")]
        if misfiled:
            raise ToldTwice(f"digested rows recorded as parent messages: {misfiled}")
    finally:
        if sender is not None:
            sender.close()
        _stop_all(beat, worker, api)

# --- Redis stopped under a real Alertmanager --------------------------------

ALERTMANAGER_GAVE_UP = "Notify for alerts failed"
ALERTMANAGER_RETRIES = "Notify attempt failed, will retry later"
WEBHOOK_ANSWER = re.compile(r'POST /webhooks/alertmanager HTTP/1\.1" (\d{3})')


@pytest.fixture(scope="module")
def alertmanager_binary() -> str:
    found = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if found:
        return found
    reason = "prometheus-alertmanager is not installed; `make test` installs it"
    if os.environ.get("INCIDENT_TEST_SKIP_ALERTMANAGER") == "1":
        pytest.skip(f"INCIDENT_TEST_SKIP_ALERTMANAGER=1: {reason}")
    pytest.fail(reason, pytrace=False)


def webhook_answers(api: ApiProcess) -> list[tuple[float, int]]:
    """(when, status) of every webhook the receiver answered, from its access log."""
    answers = []
    for line in api.log().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        found = WEBHOOK_ANSWER.search(str(record.get("event", "")))
        if found and "timestamp" in record:
            at = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()
            answers.append((at, int(found.group(1))))
    return answers


def am_group(index: int, size: int, now: datetime, first: int = 0) -> list[dict[str, Any]]:
    service = f"svc-{index:03d}"
    return [
        prometheus_alert(service=service, instance=f"{service}-{n}", severity="warning",
                         starts_at=now - timedelta(minutes=1), ends_at=now + timedelta(minutes=15))
        for n in range(first, first + size)
    ]


@pytest.mark.alertmanager
@pytest.mark.timeout(240)
def test_redis_down_answers_503_alertmanager_retries_and_nothing_is_lost(
    own_env, own_postgres, own_redis, alertmanager_binary, tmp_path
):
    broker = redis.Redis.from_url(own_redis.url)
    (tmp_path / "alertmanager").mkdir()
    api = worker = alertmanager = None
    try:
        api = ApiProcess(own_env, tmp_path / "api.log")
        worker = WorkerProcess(own_env, tmp_path / "worker.log")
        api.wait_ready()
        worker.wait_ready()
        alertmanager = AlertmanagerProcess(
            alertmanager_binary, tmp_path / "alertmanager", f"{api.url}/webhooks/alertmanager"
        )
        alertmanager.wait_ready()
        now = datetime.now(UTC)

        before = [am_group(i, 2, now) for i in range(6)]
        alertmanager.post_alerts(*(a for g in before for a in g))
        sent = {a["labels"]["instance"] for g in before for a in g}
        wait_for(
            lambda: sum(len(i.instances) for i in incidents(own_postgres.url)) == len(sent)
            and not broker_backlog(broker),
            timeout=60, interval=0.2, what="the first alerts in incidents",
        )

        with stopped(own_redis):
            down_since = time.time()
            # New groups, and a new alert in groups that already have an incident.
            during = [am_group(i, 2, now) for i in range(6, 12)]
            during += [am_group(i, 1, now, first=2) for i in range(3)]
            alertmanager.post_alerts(*(a for g in during for a in g))
            sent |= {a["labels"]["instance"] for g in during for a in g}

            def refused() -> int:
                return sum(1 for at, status in webhook_answers(api)
                           if status == 503 and at > down_since)

            wait_for(
                lambda: ALERTMANAGER_GAVE_UP in alertmanager.log() and refused() >= 3,
                timeout=60, interval=0.5, what="Alertmanager refused, retrying, giving up a round",
            )
            time.sleep(max(0.0, down_since + 15 - time.time()))
            up_again = time.time()

        wait_for(
            lambda: sum(len(i.instances) for i in incidents(own_postgres.url)) >= len(sent)
            and not broker_backlog(broker),
            timeout=90, interval=0.5, what="every alert in an incident once Redis is back",
        )
        assert_one_incident_per_group(own_postgres.url, 12, sent)

        answers = webhook_answers(api)
        # A 202 logged within a second of the stop may be a request Redis took
        # just before it went; nothing that arrived later can have been queued.
        while_down = [status for at, status in answers if down_since + 1 < at < up_again]
        assert while_down and set(while_down) == {503}, Counter(while_down)
        assert any(status == 202 for at, status in answers if at > up_again)
        assert ALERTMANAGER_RETRIES in alertmanager.log()
        assert dead_letters(broker) == []
    finally:
        _stop_all(alertmanager, worker, api)


# --- PostgreSQL stopped for 30 s ---------------------------------------------

POSTGRES_DOWN_SECONDS = 30


@pytest.mark.timeout(240)
def test_postgres_down_30s_tasks_retry_and_complete_with_nothing_lost(
    own_env, own_postgres, own_redis, tmp_path
):
    broker = redis.Redis.from_url(own_redis.url)
    api = worker = sender = None
    try:
        api = ApiProcess(own_env, tmp_path / "api.log")
        worker = WorkerProcess(own_env, tmp_path / "worker.log")
        api.wait_ready()
        worker.wait_ready()
        sender = Sender(api)
        groups = [group(i, SEVERITY_CYCLE[i % len(SEVERITY_CYCLE)]) for i in range(40)]
        for alerts in groups[:10]:
            sender.send(payload(*alerts[:2]))
        wait_for(lambda: len(incidents(own_postgres.url)) == 10 and not broker_backlog(broker),
                 timeout=60, interval=0.2, what="the first incidents")

        with stopped(own_postgres):
            down_since = time.monotonic()
            ready = httpx.get(f"{api.url}/readyz", timeout=15)
            assert ready.status_code == 503 and "database" in ready.json()["failed"]
            # Accepted all the same: the receiver needs only the broker.
            for alerts in groups[:10]:
                sender.send(payload(*alerts))  # a third alert for each open incident
            for alerts in groups[10:]:
                sender.send(payload(*alerts[:2]))
                sender.send(payload(*alerts))
            for alerts in groups[10::4]:
                sender.send(payload(*alerts))  # re-sent
            wait_for(lambda: worker.log().count("OperationalError") >= 3, timeout=30,
                     what="tasks failing on the database")
            time.sleep(max(0.0, down_since + POSTGRES_DOWN_SECONDS - time.monotonic()))
            retries = len(re.findall(r"retry: Retry in", worker.log()))

        sent = set().union(*(instances_of(g) for g in groups))
        wait_for(
            lambda: sum(len(i.instances) for i in incidents(own_postgres.url)) >= len(sent)
            and not broker_backlog(broker)
            and all(r["status"] == "sent" for r in ledger(own_postgres.url)),
            timeout=120, interval=0.5, what="every task done once PostgreSQL is back",
        )
        assert retries >= 3
        assert_one_incident_per_group(own_postgres.url, len(groups), sent)
        assert dead_letters(broker) == []
        assert "ingest failed after every retry" not in worker.log()
    finally:
        if sender is not None:
            sender.close()
        _stop_all(worker, api)
