"""Real PostgreSQL and Redis for the whole run: the ones named by
INCIDENT_TEST_DATABASE_URL / INCIDENT_TEST_REDIS_URL, else embedded ones."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
import redis
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from incident.config import Settings, get_settings
from incident.db import engine_for
from incident.embedded import EmbeddedPostgres, EmbeddedRedis
from incident.migrate import upgrade

# Fixtures of the real Alertmanager: its binary, and one per module that asks.
pytest_plugins = ("tests.alertmanager_support",)

WEBHOOK_TOKEN = "test-webhook-token-5f1c"
API_TOKEN = "test-api-token-9b7e"
TABLES = (
    "maintenance_windows", "pagerduty_events", "incident_silences", "outbox_messages",
    "remediation_runs", "notifications", "escalation_timers", "timeline_entries", "alerts",
    "incidents", "alert_groups",
)


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def create_database(server_url: str, name: str) -> str:
    with psycopg.connect(_libpq(server_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(_libpq(server_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def services_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: as root, PostgreSQL runs as another user, and
    # pytest keeps its own folder at mode 0700 (resetting it on every run).
    path = Path(tempfile.mkdtemp(prefix="incident-test-services-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server_url(services_dir: Path) -> Iterator[str]:
    """A server URL whose database we may create others from."""
    given = os.environ.get("INCIDENT_TEST_DATABASE_URL")
    if given:
        yield Settings(database_url=given).database_url
        return
    server = EmbeddedPostgres(services_dir / "postgres")
    yield server.start()
    server.stop()


@pytest.fixture(scope="session")
def database_url(postgres_server_url: str) -> Iterator[str]:
    """A database of its own for this run, migrated to head."""
    name = f"incident_test_{uuid.uuid4().hex[:8]}"
    url = create_database(postgres_server_url, name)
    upgrade(url)
    yield url
    engine_for(url).dispose()
    drop_database(postgres_server_url, name)


@pytest.fixture(scope="session")
def redis_url(services_dir: Path) -> Iterator[str]:
    given = os.environ.get("INCIDENT_TEST_REDIS_URL")
    if given:
        yield given
        return
    server = EmbeddedRedis(services_dir / "redis")
    yield server.start()
    server.stop()


@pytest.fixture(scope="session")
def incident_environment(database_url: str, redis_url: str) -> Iterator[dict[str, str]]:
    """The environment every process of the run sees, worker subprocesses included."""
    env = {
        "INCIDENT_DATABASE_URL": database_url,
        "INCIDENT_BROKER_URL": redis_url,
        "INCIDENT_REDIS_URL": redis_url,
        "INCIDENT_WEBHOOK_TOKEN": WEBHOOK_TOKEN,
        "INCIDENT_API_TOKEN": API_TOKEN,
        "INCIDENT_LOG_FORMAT": "json",
    }
    from incident.worker import app as celery_app

    # Celery reads its configuration once. Read before this point, it would hold
    # no broker URL and fall back to amqp://localhost without a word.
    assert not celery_app.configured, (
        "Celery's configuration was loaded before the test environment was set "
        "(a task proxy evaluated at import or collection time?)"
    )
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    get_settings.cache_clear()
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    get_settings.cache_clear()


@pytest.fixture
def redis_client(redis_url: str, incident_environment: dict[str, str]) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def empty_state(database_url: str, redis_client: redis.Redis) -> None:
    with engine_for(database_url).begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    redis_client.flushdb()


@pytest.fixture
def clean_state(database_url: str, redis_client: redis.Redis) -> None:
    """Empty tables and Redis, for tests whose effects outlive a transaction."""
    empty_state(database_url, redis_client)


def wait_for(predicate, *, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class ChildProcess:
    """A process the tests start, in its own process group, logging to a file."""

    name = "process"

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            argv,
            env={**os.environ, **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited: {self.log()[-3000:]}")

    def wait_http_ok(self, url: str, *, timeout: float = 30.0) -> None:
        import httpx

        def answers() -> bool:
            self.check_alive()
            try:
                return httpx.get(url, timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(answers, timeout=timeout, what=f"{self.name} {url}")

    def stop(self, grace: float = 20.0) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


class WorkerProcess(ChildProcess):
    """`incident worker` as a real subprocess, as operators run it.

    Module-scoped: tests that inspect the queue itself run where no worker drains it.
    """

    name = "worker"
    # A subclass that builds its own command line runs one node, named who knows how.
    supervised = False
    nodes: tuple[str, ...] = ()

    def __init__(
        self, env: dict[str, str], log_path: Path, concurrency: int = 2, queues: str | None = None
    ) -> None:
        node = f"test-{uuid.uuid4().hex[:6]}"
        # Without queues, as shipped: a node on every queue and its reserved page node.
        self.supervised = not queues
        self.nodes = (f"{node}@", f"{node}-page@") if self.supervised else (f"{node}@",)
        super().__init__(
            [
                sys.executable, "-m", "incident", "worker",
                "--concurrency", str(concurrency), "--pool", "prefork",
                "--hostname", f"{node}@%h", "--without-gossip",
                "--without-mingle", "--loglevel", "INFO",
                *(["--queues", queues] if queues else []),
            ],
            log_path,
            env,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            self.check_alive()
            log = self.log()
            if not self.nodes:
                return "ready." in log
            return all(re.search(rf"(?<![\w-]){re.escape(node)}\S* ready\.", log) for node in self.nodes)

        wait_for(ready, timeout=timeout, what="worker ready")

    def node_processes(self) -> list[psutil.Process]:
        """The main process of each of its Celery nodes."""
        root = psutil.Process(self.proc.pid)
        return root.children() if self.supervised else [root]

    def pool_processes(self) -> list[psutil.Process]:
        """The prefork pool processes of its node(s), not the nodes themselves."""
        found = []
        for node in self.node_processes():
            try:
                found += node.children()
            except psutil.NoSuchProcess:
                continue
        return found


def running_worker(
    env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """For a module's worker fixture: a worker with ``env``, on an empty broker."""
    # Messages left by tests that inspect the queue would otherwise be consumed
    # here, racing the per-test cleanup.
    redis.Redis.from_url(env["INCIDENT_BROKER_URL"]).flushdb()
    process = WorkerProcess(env, tmp_path_factory.mktemp("worker") / "worker.log")
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def running_api(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    """For a module's api fixture: an api process with ``env``."""
    process = ApiProcess(env, tmp_path_factory.mktemp("api") / "api.log")
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def notifiers_env(fake_slack: Any, fake_pagerduty: Any, channel: str) -> dict[str, str]:
    """Settings that send Slack and PagerDuty to the fakes, through the real clients."""
    from tests.fakes.pagerduty import DEFAULT_ROUTING_KEY
    from tests.fakes.slack import DEFAULT_TOKEN

    return {
        "INCIDENT_SLACK_BOT_TOKEN": DEFAULT_TOKEN,
        "INCIDENT_SLACK_CHANNEL": fake_slack.channel_id(channel),
        "INCIDENT_SLACK_API_URL": fake_slack.url,
        "INCIDENT_PAGERDUTY_ROUTING_KEY": DEFAULT_ROUTING_KEY,
        "INCIDENT_PAGERDUTY_EVENTS_URL": fake_pagerduty.url,
        # The worker trusts the fake PagerDuty's throwaway CA, and only it.
        "SSL_CERT_FILE": fake_pagerduty.ca_path,
    }


@pytest.fixture(scope="module")
def worker(
    incident_environment: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    yield from running_worker(incident_environment, tmp_path_factory)


@pytest.fixture
def db_session(database_url: str, clean_state: None) -> Iterator[Session]:
    """A session on empty tables, inside a transaction that is rolled back afterwards."""
    connection = engine_for(database_url).connect()
    outer = connection.begin()
    session = Session(bind=connection, join_transaction_mode="create_savepoint")
    yield session
    session.close()
    outer.rollback()
    connection.close()


class ApiProcess(ChildProcess):
    """`incident api` as a real subprocess on a free port."""

    name = "api"

    def __init__(self, env: dict[str, str], log_path: Path, port: int | None = None) -> None:
        from incident.embedded import free_port

        # A port chosen beforehand lets its own environment name its URL (INCIDENT_PUBLIC_URL).
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            [sys.executable, "-m", "incident", "api", "--port", str(self.port)], log_path, env
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        self.wait_http_ok(f"{self.url}/healthz", timeout=timeout)
