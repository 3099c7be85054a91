"""A payload that the receiver accepts must not kill the worker that takes it.

An unknown field nested a few hundred levels deep is ignored by validation,
so the receiver answers 202; the prefork worker then pickles the task for its
pool child and dies of RecursionError, and the unacknowledged message comes
back to kill the next worker too. Because of that, this runs on a Redis of its
own, with its own api and worker processes: the poison never reaches the
queues the rest of the run shares.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from sqlalchemy import text

from incident.alerts.identity import group_hash
from incident.db import engine_for
from incident.embedded import EmbeddedRedis
from tests.conftest import ApiProcess, WorkerProcess, wait_for
from tests.factories import alert, payload
from tests.fuzz.conftest import URL, WEBHOOK_HEADERS, dumps

pytestmark = pytest.mark.fuzz


class IsolatedPipeline:
    def __init__(self, api: ApiProcess, worker: WorkerProcess, database_url: str) -> None:
        self.api, self.worker, self.database_url = api, worker, database_url

    def incidents_of(self, body: dict) -> int | None:
        """The group's incident count once the worker stored it, else None."""
        with engine_for(self.database_url).connect() as conn:
            row = conn.execute(
                text("SELECT count(i.id) FROM alert_groups g LEFT JOIN incidents i "
                     "ON i.group_id = g.id WHERE g.group_hash = :h GROUP BY g.id"),
                {"h": group_hash(body["receiver"], body["groupKey"])},
            ).first()
        return row[0] if row else None


@pytest.fixture
def isolated_pipeline(
    incident_environment: dict[str, str], clean_state: None, tmp_path: Path,
) -> Iterator[IsolatedPipeline]:
    own_redis = EmbeddedRedis(tmp_path / "redis")
    url = own_redis.start()
    env = {**incident_environment, "INCIDENT_BROKER_URL": url, "INCIDENT_REDIS_URL": url}
    api = ApiProcess(env, tmp_path / "api.log")
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        api.wait_ready()
        worker.wait_ready()
        yield IsolatedPipeline(api, worker, incident_environment["INCIDENT_DATABASE_URL"])
    finally:
        worker.stop()
        api.stop()
        own_redis.stop()


@pytest.mark.parametrize("depth", [600, 900])
def test_a_deeply_nested_unknown_field_never_kills_the_worker(isolated_pipeline, depth):
    body = payload(alert(instance=f"poison-{depth}"), extra=orjson.Fragment(b"[" * depth + b"]" * depth))
    with httpx.Client(base_url=isolated_pipeline.api.url, timeout=10) as client:
        response = client.post(URL, content=dumps(body), headers=WEBHOOK_HEADERS)
    assert response.status_code in {202, 400, 422}, response.text[:300]
    if response.status_code != 202:
        return
    # Either the worker applies it, or (the bug) the worker process dies.
    wait_for(
        lambda: isolated_pipeline.worker.proc.poll() is not None
        or isolated_pipeline.incidents_of(body) is not None,
        timeout=30, what="the worker to apply the payload or die",
    )
    isolated_pipeline.worker.check_alive()
    assert isolated_pipeline.incidents_of(body) == 1
