"""A storm of 300 SEV3/SEV4 incidents in 10 s, with a SEV1 in the middle of it.

Slack hears about every incident exactly once and within its rate limit
(single parents while tokens last, digests after), and the SEV1 still pages at
once. The storm runs once for the module; each test reads one property of it.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import text

from incident.db import engine_for
from tests.conftest import TABLES, ChildProcess, WorkerProcess, wait_for
from tests.factories import alert, payload
from tests.fakes.http_server import RecordedRequest
from tests.fakes.slack import FakeMessage
from tests.notifications.conftest import CHANNEL
from tests.notifications.support import all_incidents, ledger, post

pytestmark = [pytest.mark.usefixtures("notifying_worker"), pytest.mark.timeout(150)]

STORM = 300
PER_SECOND = 30.0
SEV1_TITLE = "DatabaseDown db"
# The bucket in incident.notifications.ratelimit: 1 message a second, bursts of 3.
RATE, BURST = 1.0, 3
# The bucket counts a message when a worker takes its token; the fake counts it
# when the request arrives. In between there is work (a digest flush reads its
# rows after taking the token) and, on a busy machine, scheduling delay. A
# message whose token was taken up to LAG seconds before it arrived belongs to
# a window LAG seconds wider than the one measured here: RATE * LAG messages.
LAG = 1.0
# Measured at 0.5-1 s on a quiet machine and 2.5 s with other work on both
# cores; a page that queued behind the storm's messages would take minutes.
SEV1_PAGE_WITHIN = 5.0
# "Pages never join a digest: they come back for the next token, ... ahead of
# everything the storm queued" (delivery.py). Tokens come once a second; a SEV1
# parent still without one after this long has been starved.
SEV1_STARVED_AFTER = 15.0
DIGEST_LINE = re.compile(r"^\[(SEV\d)\] (.+?): ", re.MULTILINE)


class QueueWorker(WorkerProcess):
    """`incident worker --queues …`: a worker serving only some queues."""

    def __init__(self, env: dict[str, str], log_path, queues: str, concurrency: int) -> None:
        ChildProcess.__init__(
            self,
            [
                sys.executable, "-m", "incident", "worker", "--queues", queues,
                "--concurrency", str(concurrency), "--pool", "prefork",
                "--hostname", f"storm-{uuid.uuid4().hex[:6]}@%h", "--without-gossip",
                "--without-mingle", "--loglevel", "INFO",
            ],
            log_path,
            env,
        )


@pytest.fixture(scope="module")
def notifying_worker(notify_env, tmp_path_factory) -> Iterator[list[QueueWorker]]:
    """Two workers, as a deployment expecting storms runs them: ingestion and
    pages on one, so the Slack backlog cannot take their pool slots; Slack on
    the other."""
    redis.Redis.from_url(notify_env["INCIDENT_BROKER_URL"]).flushdb()
    logs = tmp_path_factory.mktemp("workers")
    workers = [
        QueueWorker(notify_env, logs / "ingest-page.log", "ingest,page", concurrency=3),
        QueueWorker(notify_env, logs / "notify.log", "notify,maintenance", concurrency=2),
    ]
    try:
        for worker in workers:
            worker.wait_ready()
        yield workers
    finally:
        for worker in workers:
            worker.stop()


@dataclass(frozen=True)
class Storm:
    sev1_posted_at: float  # time.monotonic(), the fakes' clock
    wall_minus_monotonic: float
    incidents: dict[str, dict[str, Any]]  # by title, as the API shows them
    ledger: list[dict[str, Any]]
    slack_posts: list[RecordedRequest]
    slack_messages: dict[str, FakeMessage]  # by ts
    pagerduty_requests: list[RecordedRequest]
    channel_id: str

    @property
    def sev1(self) -> dict[str, Any]:
        return self.incidents[SEV1_TITLE]

    def slack_row(self, shown: dict[str, Any]) -> dict[str, Any]:
        [row] = [r for r in self.ledger if r["incident_id"] == shown["id"] and r["channel"] == "slack"]
        return row

    def monotonic(self, wall) -> float:
        return wall.timestamp() - self.wall_minus_monotonic


def storm_alert(i: int) -> dict:
    return alert(alertname=f"Storm{i:03d}", severity="warning" if i % 2 else "info")


@pytest.fixture(scope="module")
def storm(
    notifying_api, notifying_worker, fake_slack, fake_pagerduty, database_url, redis_url
) -> Storm:
    with engine_for(database_url).begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    redis.Redis.from_url(redis_url).flushdb()

    sev1 = payload(alert(alertname="DatabaseDown", service="db", severity="critical", env="prod"))
    wall_minus_monotonic = time.time() - time.monotonic()
    started = time.monotonic()
    with httpx.Client() as client:
        for i in range(STORM):
            if i == STORM // 2:
                sev1_posted_at = time.monotonic()
                post(notifying_api, sev1, client)
            time.sleep(max(0.0, started + i / PER_SECOND - time.monotonic()))
            post(notifying_api, payload(storm_alert(i)), client)
    assert time.monotonic() - started < 12, "the storm itself took too long to post"

    def slack_settled():
        rows = [r for r in ledger() if r["channel"] == "slack"]
        return len(rows) == STORM + 1 and all(r["status"] in ("sent", "failed") for r in rows)

    try:
        wait_for(slack_settled, timeout=45, interval=0.5, what="every Slack row sent or failed")
    except AssertionError:
        pass  # each test below says what is missing
    channel_id = fake_slack.channel_id(CHANNEL)
    return Storm(
        sev1_posted_at=sev1_posted_at,
        wall_minus_monotonic=wall_minus_monotonic,
        incidents={shown["title"]: shown for shown in all_incidents(notifying_api)},
        ledger=ledger(),
        slack_posts=fake_slack.calls("chat.postMessage"),
        slack_messages={m.ts: m for m in fake_slack.parents(channel_id)},
        pagerduty_requests=fake_pagerduty.requests,
        channel_id=channel_id,
    )


def digest_text(message: FakeMessage) -> str:
    return "\n".join(
        block["text"]["text"] for block in message.blocks or [] if block.get("type") == "section"
    )


def ledger_id_of(body: dict) -> int | None:
    metadata = body.get("metadata") or {}
    if isinstance(metadata, str):  # form-encoded calls carry it as JSON text
        metadata = json.loads(metadata)
    return (metadata.get("event_payload") or {}).get("ledger_id")


def test_every_incident_of_the_storm_is_told_on_slack_exactly_once(storm: Storm):
    assert len(storm.incidents) == STORM + 1
    assert {i["severity"] for t, i in storm.incidents.items() if t != SEV1_TITLE} == {"SEV3", "SEV4"}
    unsent = [(r["incident_id"], r["status"], r["last_error"])
              for r in storm.ledger if r["channel"] == "slack" and r["status"] != "sent"]
    assert not unsent, f"{len(unsent)} Slack row(s) not sent: {unsent[:5]}"

    told: Counter[str] = Counter()
    digest_ts: set[str] = set()
    for title, shown in storm.incidents.items():
        ts = storm.slack_row(shown)["external_id"]
        if ts.startswith("digest:"):
            digest_ts.add(ts.removeprefix("digest:"))
            continue  # counted from the digests' own text below
        parent = storm.slack_messages[ts]
        assert parent.metadata["event_payload"]["incident_id"] == shown["id"]
        assert f"[{shown['severity']}] {title}" in parent.text
        told[title] += 1
    assert digest_ts, "a storm this size must have been coalesced into digests"
    for ts in digest_ts:
        for severity, title in DIGEST_LINE.findall(digest_text(storm.slack_messages[ts])):
            assert storm.incidents[title]["severity"] == severity
            told[title] += 1
    assert told == Counter(dict.fromkeys(storm.incidents, 1))
    assert storm.slack_row(storm.sev1)["external_id"] in storm.slack_messages, (
        "a SEV1 opening has a parent of its own, never a digest line"
    )


def test_slack_posts_stay_within_the_token_bucket(storm: Storm):
    assert {r.body.get("channel") for r in storm.slack_posts} == {storm.channel_id}
    assert len(storm.slack_posts) == len(storm.slack_messages), (
        "every post is one message: none failed, none was a reply"
    )
    times = sorted(r.at for r in storm.slack_posts)
    # Over any window [t_i, t_j], at most BURST + RATE * (t_j - t_i + LAG) posts.
    worst = max(
        (j - i + 1) - (BURST + RATE * (times[j] - times[i] + LAG))
        for i in range(len(times)) for j in range(i, len(times))
    )
    assert worst <= 0, f"{worst:.2f} message(s) over the token bucket in some window"


def test_the_sev1_in_the_storm_pages_within_seconds_of_its_webhook(storm: Storm):
    [page] = [
        r for r in storm.pagerduty_requests
        if r.body.get("dedup_key") == storm.sev1["key"] and r.body["event_action"] == "trigger"
    ]
    [row] = [r for r in storm.ledger if r["incident_id"] == storm.sev1["id"] and r["channel"] == "pagerduty"]
    ingested = storm.monotonic(row["created_at"])
    assert page.at - storm.sev1_posted_at <= SEV1_PAGE_WITHIN, (
        f"paged {page.at - storm.sev1_posted_at:.2f} s after the webhook: "
        f"{ingested - storm.sev1_posted_at:.2f} s waiting to be ingested, then "
        f"{page.at - ingested:.2f} s to PagerDuty"
    )


@pytest.mark.usefixtures("clean_state")
def test_a_sev1_slack_parent_is_posted_while_other_messages_drain_the_bucket(
    notifying_api, notify_env, redis_client
):
    """A storm's messages take each token as it refills. This one does that on
    purpose, from the test, so that every time the SEV1's parent comes back for
    "the next token" someone else has just taken it."""
    from incident.notifications.ratelimit import TokenBucket

    bucket = TokenBucket(redis_client)
    channel = notify_env["INCIDENT_SLACK_CHANNEL"]
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            bucket.take(channel)
            stop.wait(0.005)

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    try:
        post(notifying_api, payload(alert(alertname="DatabaseDown", service="db", severity="critical", env="prod")))

        def slack_row_final():
            rows = [r for r in ledger() if r["channel"] == "slack"]
            return rows[0] if rows and rows[0]["status"] in ("sent", "failed") else None

        try:
            row = wait_for(slack_row_final, timeout=SEV1_STARVED_AFTER, interval=0.2, what="the SEV1 parent")
        except AssertionError:
            row = next(r for r in ledger() if r["channel"] == "slack")
    finally:
        stop.set()
        drainer.join(timeout=5)
    assert row["status"] == "sent", (
        f"the SEV1's Slack parent is {row['status']} after {row['attempts']} attempts "
        f"({row['last_error']}): starved of tokens by non-priority takers"
    )
