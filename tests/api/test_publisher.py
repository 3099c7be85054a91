"""Webhooks pushed straight onto Redis are the task Celery's send_task would have sent."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import orjson
import pytest
import redis
from fastapi.testclient import TestClient

from incident.api.app import create_app
from incident.config import get_settings
from incident.embedded import free_port
from incident.incidents.ingest import INGEST_TASK
from incident.worker.app import app as celery_app
from incident.worker.publisher import CLIENT_NAME, TaskPublisher, direct_url
from tests.conftest import WEBHOOK_TOKEN, wait_for
from tests.factories import alert, payload

URL = "/webhooks/alertmanager"
HEADERS = {"Authorization": f"Bearer {WEBHOOK_TOKEN}", "Content-Type": "application/json"}
SUMMARY = "{'group': '0123456789abcdef', 'status': 'firing', 'alerts': 1}"


def decoded(stored: bytes) -> dict:
    """A message as kombu's Redis transport keeps it, with its body decoded."""
    message = json.loads(stored)
    assert message["properties"]["body_encoding"] == "base64"
    message["body"] = json.loads(base64.b64decode(message["body"]))
    return message


def without_ids(message: dict) -> dict:
    """The message with its per-message ids replaced, after checking how they are related."""
    headers, properties = message["headers"], message["properties"]
    task_id = headers["id"]
    assert headers["root_id"] == properties["correlation_id"] == task_id
    assert properties["delivery_tag"] != task_id
    headers["id"] = headers["root_id"] = properties["correlation_id"] = "(task id)"
    properties["delivery_tag"] = "(delivery tag)"
    return message


def publisher() -> TaskPublisher:
    url = direct_url(get_settings().require_broker_url())
    assert url is not None
    return TaskPublisher(celery_app, url)


def test_the_message_is_the_one_send_task_publishes(clean_state, redis_client):
    kwargs = {"payload": payload(alert(instance="é-1")), "received_at": 1764800000.25}
    celery_app.send_task(INGEST_TASK, kwargs=kwargs, kwargsrepr=SUMMARY, queue="page")
    [by_celery] = redis_client.lrange("page", 0, -1)
    redis_client.delete("page")

    async def publish() -> str:
        sender = publisher()
        try:
            return await sender.publish(INGEST_TASK, kwargs, queue="page", kwargsrepr=SUMMARY)
        finally:
            await sender.close()

    task_id = asyncio.run(publish())
    [ours] = redis_client.lrange("page", 0, -1)
    assert decoded(ours)["headers"]["id"] == task_id
    assert without_ids(decoded(ours)) == without_ids(decoded(by_celery))
    assert decoded(ours)["body"][1] == kwargs


def test_one_connection_is_kept_open_across_webhooks(clean_state, redis_client):
    def publisher_connections() -> list[dict]:
        return [c for c in redis_client.client_list() if c["name"] == CLIENT_NAME]

    assert publisher_connections() == []
    with TestClient(create_app(get_settings())) as client:
        seen = set()
        for n in range(10):
            body = payload(alert(instance=f"kept-{n}"), group_labels={"n": str(n)})
            response = client.post(URL, content=orjson.dumps(body), headers=HEADERS)
            assert response.status_code == 202
            seen.update(c["id"] for c in publisher_connections())
        assert len(seen) == 1, f"the webhooks were pushed over {len(seen)} connections"
    assert redis_client.llen("ingest") == 10
    # Closed with the app.
    wait_for(lambda: publisher_connections() == [], what="the connection to close")


@pytest.mark.timeout(60)
def test_503_at_once_when_the_broker_refuses_connections(clean_state, redis_client):
    settings = get_settings().model_copy(
        update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"}
    )
    with TestClient(create_app(settings)) as client:
        started = time.monotonic()
        response = client.post(URL, content=orjson.dumps(payload()), headers=HEADERS)
        assert time.monotonic() - started < 5
    assert response.status_code == 503
    assert response.json() == {"error": "could not enqueue durably; retry later"}


def lpush_calls(client: redis.Redis) -> int:
    return client.info("commandstats").get("cmdstat_lpush", {}).get("calls", 0)


def test_concurrent_messages_share_lpushes_and_keep_their_order(own_broker):
    client = redis.Redis.from_url(own_broker.url)

    async def publish_together(count: int) -> list[str]:
        sender = TaskPublisher(celery_app, own_broker.url)
        try:
            return await asyncio.gather(*(
                sender.publish(INGEST_TASK, {"payload": {"n": n}}, queue="ingest", kwargsrepr="")
                for n in range(count)
            ))
        finally:
            await sender.close()

    before = lpush_calls(client)
    ids = asyncio.run(publish_together(50))
    assert lpush_calls(client) - before < 10
    # Kombu pops from the right: the oldest message first.
    messages = [decoded(m) for m in reversed(client.lrange("ingest", 0, -1))]
    assert [m["headers"]["id"] for m in messages] == ids
    assert [m["body"][1]["payload"]["n"] for m in messages] == list(range(50))


def test_every_message_of_a_failed_lpush_gets_the_error():
    async def publish_together() -> list[object]:
        sender = TaskPublisher(celery_app, f"redis://127.0.0.1:{free_port()}/0")
        try:
            return await asyncio.gather(*(
                sender.publish(INGEST_TASK, {"payload": {"n": n}}, queue="ingest", kwargsrepr="")
                for n in range(5)
            ), return_exceptions=True)
        finally:
            await sender.close()

    outcomes = asyncio.run(publish_together())
    assert all(isinstance(o, redis.ConnectionError) for o in outcomes), outcomes


# Last: the module's worker drains the queues the tests above read.
def test_a_worker_runs_the_published_task_with_its_kwargs(clean_state, worker, redis_client):
    body = payload(alert(instance="published-1"), group_labels={"g": "published"})

    async def publish() -> str:
        sender = publisher()
        try:
            return await sender.publish(
                INGEST_TASK, {"payload": body, "received_at": time.time()}, queue="ingest",
                kwargsrepr=SUMMARY,
            )
        finally:
            await sender.close()

    task_id = asyncio.run(publish())
    wait_for(lambda: f"{task_id}] succeeded" in worker.log(), what="the task to succeed")
    line = next(ln for ln in worker.log().splitlines() if f"{task_id}] succeeded" in ln)
    # The task returns the incident it opened: the payload reached it whole.
    assert not line.rstrip().endswith("None"), line
