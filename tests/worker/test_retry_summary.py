"""A retried ingest task keeps the summary it was queued with: its message, and so
Flower, never shows the webhook payload."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import orjson
import pytest
import redis
from fastapi.testclient import TestClient

from incident.alerts.identity import group_hash
from incident.api.app import create_app
from incident.config import get_settings
from incident.embedded import free_port
from incident.incidents.ingest import INGEST_TASK
from tests.conftest import WEBHOOK_TOKEN, WorkerProcess, wait_for
from tests.factories import alert, payload

SECRET_LABEL = "label-value-that-must-not-show-3e9a"


@pytest.fixture
def worker_without_database(
    incident_environment, clean_state, tmp_path_factory
) -> Iterator[WorkerProcess]:
    """A worker whose database refuses connections: every ingest fails with an
    OperationalError, which the task retries."""
    closed = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"
    process = WorkerProcess(
        {**incident_environment, "INCIDENT_DATABASE_URL": closed},
        tmp_path_factory.mktemp("worker") / "worker.log",
    )
    process.wait_ready()
    yield process
    process.stop()


def ingest_messages(client: redis.Redis) -> list[dict]:
    """Every ingest message the broker holds: queued, or taken and not yet acknowledged
    (a retry waits out its countdown there)."""
    raw = [*client.lrange("ingest", 0, -1)]
    raw += [json.loads(value)[0] for value in client.hvals("unacked")]
    messages = [json.loads(m) if isinstance(m, bytes | str) else m for m in raw]
    return [m for m in messages if m["headers"].get("task") == INGEST_TASK]


def test_a_retried_ingest_message_shows_the_summary_not_the_payload(
    worker_without_database, redis_client
):
    body = payload(alert(instance=SECRET_LABEL))
    with TestClient(create_app(get_settings())) as api:
        response = api.post(
            "/webhooks/alertmanager", content=orjson.dumps(body),
            headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}",
                     "Content-Type": "application/json"},
        )
    assert response.status_code == 202, response.text

    def retried():
        found = [m for m in ingest_messages(redis_client) if m["headers"].get("retries", 0) >= 1]
        return found or None

    [message, *_] = wait_for(retried, timeout=30, interval=0.02, what="a retried ingest message")
    summary = {"group": group_hash(body["receiver"], body["groupKey"])[:16],
               "status": "firing", "alerts": 1}
    assert message["headers"]["kwargsrepr"] == repr(summary)
    assert SECRET_LABEL not in json.dumps(message["headers"])
    # The body still carries the payload, for the retry to apply.
    _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert kwargs["payload"] == body
    # And when the receiver took the webhook, for the latency it starts.
    assert set(kwargs) == {"payload", "received_at"}
    assert 0 <= time.time() - kwargs["received_at"] < 60
