"""The ingest task: retries what passes, and parks what it finally cannot apply."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from incident.incidents import deadletters
from incident.worker.tasks import incidents as incident_tasks
from tests.factories import alert, payload

# Celery task objects are lazy proxies: reach them through the module at test
# time, never as module attributes pytest would evaluate while collecting.


@pytest.mark.usefixtures("clean_state")
def test_a_payload_that_outlives_every_retry_is_parked_not_lost(redis_client):
    body = payload(alert(instance="kept"))
    error = OperationalError("INSERT …", {}, ConnectionRefusedError("connection refused"))
    # What Celery calls once max_retries is spent.
    incident_tasks.ingest_webhook.on_failure(error, "task-1", (), {"payload": body}, None)

    [parked] = deadletters.parked(redis_client)
    assert parked["payload"] == body
    assert parked["task_id"] == "task-1"
    assert "connection refused" in parked["error"]
    assert deadletters.take_oldest(redis_client)["payload"] == body
    assert deadletters.parked(redis_client) == []


def test_the_task_gives_up_only_through_the_parking_hook():
    task = incident_tasks.ingest_webhook
    assert task.on_failure.__func__ is incident_tasks._park_after_last_retry


def test_the_task_retries_only_errors_that_can_pass():
    task = incident_tasks.ingest_webhook
    retried = {cls.__name__ for cls in task.autoretry_for}
    assert retried == {"OperationalError", "ConnectionError", "TimeoutError"}
    assert task.max_retries and task.retry_backoff_max <= 60


@pytest.mark.usefixtures("clean_state")
def test_replay_queues_every_parked_payload_again(redis_client, incident_environment):
    import subprocess
    import sys

    for n in range(3):
        deadletters.park(redis_client, payload(alert(instance=str(n))), task_id=f"t{n}", error="x")
    done = subprocess.run(
        [sys.executable, "-m", "incident", "dead-letters", "replay"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "replayed 3" in done.stdout
    assert deadletters.parked(redis_client) == []
    assert redis_client.llen("ingest") == 3
