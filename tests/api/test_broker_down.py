"""With the broker gone the receiver says 503, never 202; when it returns, so does 202."""

from __future__ import annotations


import httpx
import orjson
import pytest
import redis

from tests.conftest import WEBHOOK_TOKEN, ApiProcess
from tests.factories import alert, payload

HEADERS = {"Authorization": f"Bearer {WEBHOOK_TOKEN}", "Content-Type": "application/json"}


@pytest.mark.timeout(120)
def test_the_receiver_answers_503_while_the_broker_is_down(
    own_broker, incident_environment, tmp_path
):
    env = {**incident_environment, "INCIDENT_BROKER_URL": own_broker.url,
           "INCIDENT_REDIS_URL": own_broker.url}
    api = ApiProcess(env, tmp_path / "api.log")
    try:
        api.wait_ready()
        def post(n):
            return httpx.post(
                    f"{api.url}/webhooks/alertmanager",
                    content=orjson.dumps(payload(alert(instance=str(n)))),
                    headers=HEADERS, timeout=15,
                )
        assert post(1).status_code == 202

        own_broker.stop()
        down = post(2)
        assert down.status_code == 503
        assert "enqueue" in down.json()["error"]
        ready = httpx.get(f"{api.url}/readyz", timeout=15)
        assert ready.status_code == 503
        assert "broker" in ready.json()["failed"]

        own_broker.start()
        assert post(3).status_code == 202
        # The append-only file kept the first message; the refused one was never queued.
        queued = redis.Redis.from_url(own_broker.url).llen("ingest")
        assert queued == 2
    finally:
        api.stop()
