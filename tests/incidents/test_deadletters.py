"""Parked payloads are bounded, in number and in size, and say what they gave up."""

from __future__ import annotations

import orjson
import pytest
from structlog.testing import capture_logs

from incident.incidents import deadletters
from tests.factories import alert, payload

pytestmark = pytest.mark.usefixtures("clean_state")


def test_past_the_cap_the_oldest_parked_payloads_go_and_the_log_says_how_many(redis_client):
    cap = deadletters.MAX_PARKED
    # Filled as park() would, but in one round trip.
    redis_client.lpush(deadletters.DEAD_LETTERS_KEY, *[
        orjson.dumps({"at": 0, "task_id": f"old-{n}", "error": "x", "payload": {"n": n}})
        for n in range(cap - 1)
    ])
    with capture_logs() as logs:
        deadletters.park(redis_client, payload(alert(instance="a")), task_id="new-0", error="e")
    assert not [entry for entry in logs if entry["log_level"] == "error"]
    with capture_logs() as logs:
        for n in range(1, 4):
            deadletters.park(redis_client, payload(alert(instance="b")), task_id=f"new-{n}",
                             error="e")

    assert redis_client.llen(deadletters.DEAD_LETTERS_KEY) == cap
    kept = [record["task_id"] for record in deadletters.parked(redis_client)]
    assert kept[:4] == ["new-3", "new-2", "new-1", "new-0"]
    # The oldest went first.
    assert kept[-1] == "old-3" and not {"old-0", "old-1", "old-2"} & set(kept)
    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert [entry["dropped"] for entry in errors] == [1, 1, 1]
    assert all("oldest" in entry["event"] for entry in errors)


def test_a_payload_too_large_to_park_keeps_its_summary_and_says_so(redis_client):
    huge = payload(alert(instance="x", blob="y" * (deadletters.MAX_PARKED_BYTES + 1)))
    with capture_logs() as logs:
        deadletters.park(redis_client, huge, task_id="t-huge", error="OperationalError(...)")
        deadletters.park(redis_client, payload(alert(instance="small")), task_id="t-small",
                         error="e" * 100_000)

    small, large = deadletters.parked(redis_client)
    assert small["payload"] == payload(alert(instance="small"))
    assert len(small["error"]) <= deadletters.MAX_ERROR_CHARS
    assert large["payload"] is None
    assert large["summary"] == {"receiver": huge["receiver"], "groupKey": huge["groupKey"],
                                "status": "firing", "alerts": 1}
    assert large["size"] > deadletters.MAX_PARKED_BYTES
    assert max(len(raw) for raw in redis_client.lrange(deadletters.DEAD_LETTERS_KEY, 0, -1)) < 4096
    [error] = [entry for entry in logs if entry["log_level"] == "error"]
    assert error["task_id"] == "t-huge" and error["size"] > deadletters.MAX_PARKED_BYTES
    assert "y" * 100 not in str(error)


def test_replay_sends_what_was_kept_and_names_what_was_too_large(redis_client, incident_environment):
    import subprocess
    import sys

    huge = payload(alert(instance="x", blob="y" * (deadletters.MAX_PARKED_BYTES + 1)))
    deadletters.park(redis_client, huge, task_id="t-huge", error="e")
    deadletters.park(redis_client, payload(alert(instance="small")), task_id="t-small", error="e")
    done = subprocess.run(
        [sys.executable, "-m", "incident", "dead-letters", "replay"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "replayed 1" in done.stdout
    assert "not replayable" in done.stdout and huge["groupKey"] in done.stdout
    assert redis_client.llen("ingest") == 1
    assert deadletters.parked(redis_client) == []
