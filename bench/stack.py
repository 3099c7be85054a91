"""The system under test: PostgreSQL, Redis, `incident api` and `incident worker`.

Every child runs in its own session with INCIDENT_BENCH_RUN in its environment,
so the bench can stop whole process groups and then prove nothing was left.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psutil
import redis

from incident.embedded import EmbeddedPostgres, EmbeddedRedis, free_port, process_gone

WEBHOOK_TOKEN = "bench-webhook-token-3d9a"
API_TOKEN = "bench-api-token-71c4"
RUN_MARKER = "INCIDENT_BENCH_RUN"
# Kombu's Redis transport keeps a delivered, unacknowledged message in these.
BROKER_KEYS = ("ingest", "unacked", "unacked_index")
# Every queue `incident worker` consumes by default (incident.worker.routes.QUEUES).
ALL_QUEUE_KEYS = (
    "ingest",
    "page",
    "notify",
    "remediate",
    "maintenance",
    "unacked",
    "unacked_index",
)


class Stack:
    """Databases plus the environment every incident process of the run shares."""

    def __init__(self, log_level: str = "WARNING") -> None:
        self.run_id = uuid.uuid4().hex[:8]
        # As root PostgreSQL runs as another user: no 0700 parent directory.
        self.workdir = Path(tempfile.mkdtemp(prefix="incident-bench-"))
        self.workdir.chmod(0o755)
        self.log_level = log_level
        self._postgres: EmbeddedPostgres | None = None
        self._redis: EmbeddedRedis | None = None
        self.database_url = ""
        self.redis_url = ""
        self.children: list[Child] = []

    def start(self) -> None:
        self.database_url = os.environ.get("INCIDENT_BENCH_DATABASE_URL", "")
        if not self.database_url:
            self._postgres = EmbeddedPostgres(self.workdir / "postgres")
            self.database_url = self._postgres.start()
        self.redis_url = os.environ.get("INCIDENT_BENCH_REDIS_URL", "")
        if not self.redis_url:
            self._redis = EmbeddedRedis(self.workdir / "redis")
            self.redis_url = self._redis.start()
        subprocess.run(
            [sys.executable, "-m", "incident", "migrate"],
            env=self.env(),
            check=True,
            capture_output=True,
            timeout=120,
        )

    @property
    def postgres_pid(self) -> int | None:
        """The embedded postmaster (not our child: pg_ctl daemonises it)."""
        return self._postgres.pid if self._postgres is not None else None

    @property
    def redis_pid(self) -> int | None:
        """The embedded redis-server (None when the bench uses someone else's Redis)."""
        return self._redis.pid if self._redis is not None else None

    @property
    def embedded(self) -> dict[str, bool]:
        return {"postgres": self._postgres is not None, "redis": self._redis is not None}

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "INCIDENT_DATABASE_URL": self.database_url,
            "INCIDENT_BROKER_URL": self.redis_url,
            "INCIDENT_REDIS_URL": self.redis_url,
            "INCIDENT_WEBHOOK_TOKEN": WEBHOOK_TOKEN,
            "INCIDENT_API_TOKEN": API_TOKEN,
            "INCIDENT_LOG_FORMAT": "json",
            "INCIDENT_LOG_LEVEL": self.log_level,
            RUN_MARKER: self.run_id,
        }

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def purge_queue(self) -> None:
        """Drop waiting and unacknowledged ingest messages (only with no worker running)."""
        self.redis().unlink(*BROKER_KEYS)

    def api(
        self, workers: int = 1, *, env: dict[str, str] | None = None, name: str = ""
    ) -> ApiProcess:
        """``incident api``; ``env`` overrides the stack's environment (another broker, say)."""
        api = ApiProcess(self, workers, env=env, name=name)
        self.children.append(api)
        return api

    def worker(
        self, concurrency: int, *, queues: str | None = None, env: dict[str, str] | None = None
    ) -> Child:
        """``incident worker``: its default queues (all of them, and a reserved ``page``
        node beside) unless ``queues`` names some."""
        name = uuid.uuid4().hex[:6]
        argv = [
            sys.executable, "-m", "incident", "worker",
            "--concurrency", str(concurrency), "--pool", "prefork",
            "--hostname", f"bench-{name}@%h",
            "--without-gossip", "--without-mingle", "--loglevel", self.log_level,
        ]  # fmt: skip
        if queues:
            argv += ["--queues", queues]
        child = Child(
            argv, {**self.env(), **(env or {})}, self.workdir / f"worker-c{concurrency}-{name}.log"
        )
        child.node_prefix = f"bench-{name}@"  # its Celery node name, as `celery inspect` shows it
        if not queues:  # and the page node `incident worker` reserves beside it
            child.node_prefixes = (child.node_prefix, f"bench-{name}-page@")
        self.children.append(child)
        return child

    def default_worker(self, *, env: dict[str, str] | None = None) -> Child:
        """``incident worker`` exactly as shipped, without a flag: its node on every
        queue and its reserved ``page`` node (``celery@HOST`` and ``page@HOST``)."""
        argv = [sys.executable, "-m", "incident", "worker"]
        child = Child(argv, {**self.env(), **(env or {})}, self.workdir / "worker-default.log")
        child.node_prefix = "celery@"
        child.node_prefixes = ("celery@", "page@")
        self.children.append(child)
        return child

    def reference(self, app: str, workers: int) -> ApiProcess:
        """A bench.reference app under uvicorn, ``workers`` processes, with the stack's environment."""
        server = ReferenceProcess(self, app, workers)
        self.children.append(server)
        return server

    def purge_all_queues(self) -> None:
        """Drop every Celery queue's messages, waiting or unacknowledged (no worker running)."""
        self.redis().unlink(*ALL_QUEUE_KEYS)

    def stop(self) -> list[str]:
        """Stop everything; return a description of any process of this run still alive."""
        for child in reversed(self.children):
            child.stop()
        servers = []
        if self._redis is not None:
            servers.append(("redis-server", self._redis.pid))
            self._redis.stop()
        if self._postgres is not None:
            servers.append(("postgres", self._postgres.pid))
            self._postgres.stop()
        leftovers = leftover_processes(self.run_id)
        leftovers += [f"{pid} {name}" for name, pid in servers if pid and not process_gone(pid)]
        if not os.environ.get("INCIDENT_BENCH_KEEP"):
            shutil.rmtree(self.workdir, ignore_errors=True)
        return leftovers


class Child:
    """A subprocess in its own process group, logging to a file."""

    node_prefix = ""
    node_prefixes: tuple[str, ...] = ()  # every Celery node it runs, when more than one

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.proc.args[3]} exited {self.proc.returncode}:\n{tail}")

    def stop(self, timeout: float = 20.0) -> None:
        if self._log.closed:  # stopped already: its group id may belong to someone else now
            return
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # Prefork children and uvicorn's spawned workers share the group: make sure they went too.
        _signal_group(self.proc.pid, signal.SIGKILL)
        self._log.close()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


class ApiProcess(Child):
    ready_path = "/healthz"

    def __init__(
        self, stack: Stack, workers: int, *, env: dict[str, str] | None = None, name: str = ""
    ) -> None:
        self.port = free_port()
        self.host = "127.0.0.1"
        self.url = f"http://{self.host}:{self.port}"
        argv = [
            sys.executable, "-m", "incident", "api",
            "--port", str(self.port), "--workers", str(workers),
        ]  # fmt: skip
        log = stack.workdir / f"api-w{workers}{'-' + name if name else ''}.log"
        super().__init__(argv, {**stack.env(), **(env or {})}, log)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(f"{self.url}{self.ready_path}", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"api did not answer {self.ready_path} within {timeout:.0f}s")


class ReferenceProcess(ApiProcess):
    """uvicorn serving one of bench.reference's apps, set up as ``incident api`` runs uvicorn."""

    ready_path = "/openapi.json"

    def __init__(self, stack: Stack, app: str, workers: int) -> None:
        self.port = free_port()
        self.host = "127.0.0.1"
        self.url = f"http://{self.host}:{self.port}"
        argv = [
            sys.executable, "-m", "uvicorn", f"bench.reference:{app}",
            "--app-dir", str(Path(__file__).resolve().parent.parent),
            "--port", str(self.port), "--workers", str(workers),
            "--log-level", "warning", "--no-access-log", "--no-server-header",
        ]  # fmt: skip
        Child.__init__(self, argv, stack.env(), stack.workdir / f"reference-{app}.log")


def leftover_processes(run_id: str) -> list[str]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid == os.getpid():
            continue
        try:
            if proc.environ().get(RUN_MARKER) == run_id and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(f"{proc.pid} {' '.join(proc.info['cmdline'] or [])[:120]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found
