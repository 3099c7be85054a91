"""What a broker crash right after a burst keeps of the webhooks already answered 202.

A Redis of the test's own (append-only, with the fsync policy under test) takes
a real `incident api`'s messages; the test posts webhooks as fast as the api
answers, SIGKILLs Redis the moment the last 202 arrives, starts it again on the
same data directory, and looks for each accepted webhook's message in the queues.

SIGKILL ends the process, not the machine: what Redis had written to its AOF is
still in the kernel's page cache and survives. So `everysec` loses here only
what Redis had not yet written (it may hold writes back for up to 2 s while a
slow fsync runs); a power loss or kernel crash would also lose up to a second
of written but unsynced data, which no test on a live machine can cause. With
`always`, Redis writes and fsyncs before it replies, so every 202 survives both.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis

from incident.embedded import EmbeddedRedis
from tests import factories
from tests.conftest import WEBHOOK_TOKEN, ApiProcess

pytestmark = pytest.mark.timeout(180)

WEBHOOKS = 1_000
CONCURRENCY = 16
HEADERS = {"Authorization": f"Bearer {WEBHOOK_TOKEN}", "Content-Type": "application/json"}


def webhook(n: int) -> bytes:
    # Every third one is critical, so the page queue is exercised too.
    labels = {"burst": str(n)}
    if n % 3 == 0:
        labels.update(severity="critical", env="prod")
    return orjson.dumps(factories.payload(factories.alert(service=f"svc-{n}", **labels)))


async def post_burst(url: str, count: int) -> set[int]:
    """The numbers of the webhooks answered 202, posting ``CONCURRENCY`` at a time."""
    numbers = iter(range(count))
    accepted: set[int] = set()
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10) as client:

        async def sender() -> None:
            for n in numbers:
                answer = await client.post("/webhooks/alertmanager", content=webhook(n),
                                           headers=HEADERS)
                if answer.status_code == 202:
                    accepted.add(n)

        await asyncio.gather(*(sender() for _ in range(CONCURRENCY)))
    return accepted


def queued_numbers(client: redis.Redis) -> set[int]:
    """The burst number of every ingest message waiting in any list (ingest, page, …)."""
    found: set[int] = set()
    for key in client.scan_iter(count=1000):
        if client.type(key) != b"list":
            continue
        for raw in client.lrange(key, 0, -1):
            message = json.loads(raw)
            body = message["body"]
            if message["properties"].get("body_encoding") == "base64":
                body = base64.b64decode(body)
            _args, kwargs, _embed = json.loads(body)
            for alert in kwargs["payload"]["alerts"]:
                found.add(int(alert["labels"]["burst"]))
    return found


@pytest.fixture
def redis_home() -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="incident-durability-"))
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize("appendfsync", ["always", "everysec"])
def test_webhooks_answered_202_and_a_redis_sigkill_right_after(
    appendfsync, incident_environment, redis_home, tmp_path, capsys, record_property
):
    server = EmbeddedRedis(redis_home, options={"appendfsync": appendfsync})
    url = server.start()
    api = ApiProcess({**incident_environment, "INCIDENT_BROKER_URL": url,
                      "INCIDENT_REDIS_URL": url}, tmp_path / "api.log")
    try:
        assert redis.Redis.from_url(url).config_get("appendfsync") == {
            "appendfsync": appendfsync
        }
        api.wait_ready()
        accepted = asyncio.run(post_burst(api.url, WEBHOOKS))
        server.kill()
        api.stop()
        server.start()
        survived = queued_numbers(redis.Redis.from_url(url))
    finally:
        api.stop()
        server.stop()

    lost = accepted - survived
    record_property("accepted", len(accepted))
    record_property("lost", len(lost))
    with capsys.disabled():
        print(f"\nappendfsync {appendfsync}: {len(accepted)} webhooks answered 202, "
              f"{len(lost)} lost to a Redis SIGKILL right after the burst")
    assert len(accepted) == WEBHOOKS, "the api refused part of the burst"
    if appendfsync == "always":
        assert lost == set()
