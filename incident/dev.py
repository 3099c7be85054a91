"""`incident dev`: the whole system on one machine, for a first try.

Embedded PostgreSQL and Redis (unless the environment names real ones), migrations,
then the API, one worker and beat as child processes. Each child has its own process
group, so a Ctrl-C at the terminal reaches only this supervisor, which then stops the
children in order (they still need the broker and the database while they shut down)
and the embedded servers last.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import psutil
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

import incident
from incident.embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedServerError

HEALTH_TIMEOUT = 60.0
MIGRATE_TIMEOUT = 300.0
STOP_GRACE = 10.0
_POLL = 0.2
_CHILDREN_FILE = "dev-children.json"


class DevError(RuntimeError):
    """A step of `incident dev` failed; the message says which and why."""


class _StopRequested(Exception):
    pass


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen[bytes]


def run_dev(state_dir: Path = Path(".incident"), host: str = "127.0.0.1", port: int = 8080) -> int:
    """Run everything until Ctrl-C or SIGTERM (exit 0) or until a child dies (non-zero)."""
    return DevStack(Path(state_dir), host, port).run()


def _say(message: str) -> None:
    print(f"incident dev: {message}", file=sys.stderr, flush=True)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        # Any other name may resolve to anything, now or later: not loopback.
        return False


def check_exposure(host: str, env: dict[str, str]) -> None:
    """Refuse to serve beyond this machine without both tokens.

    Dev mode lets requests in without a token, which is fine on loopback only.
    """
    if _is_loopback(host):
        return
    missing = [
        name for name in ("INCIDENT_WEBHOOK_TOKEN", "INCIDENT_API_TOKEN")
        if not env.get(name, "").strip()
    ]
    if missing:
        raise DevError(
            f"--host {host or '(every address)'} is not loopback, and dev mode serves without "
            "tokens: set both INCIDENT_WEBHOOK_TOKEN and INCIDENT_API_TOKEN to listen there "
            f"({' and '.join(missing)} not set), or use --host 127.0.0.1"
        )


def _shown_database_url(url: str) -> str:
    """The URL without its password, for messages; the password is never printed."""
    try:
        # The query too: libpq also takes `?password=`.
        return make_url(url).set(query={}).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "from INCIDENT_DATABASE_URL"


def _http_host(host: str) -> str:
    # Listening on every address: talk to it on loopback.
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class DevStack:
    def __init__(self, state_dir: Path, host: str, port: int) -> None:
        self.state_dir = state_dir.expanduser().resolve()
        self.host = host
        self.port = port
        self.base_url = f"http://{_http_host(host)}:{port}"
        self.env = dict(os.environ)
        self.postgres: EmbeddedPostgres | None = None
        self.redis: EmbeddedRedis | None = None
        self.children: list[_Child] = []
        self._signals: list[int] = []

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> int:
        previous = self._trap_signals()
        try:
            try:
                self._start()
                self._print_banner()
                return self._supervise()
            except (_StopRequested, KeyboardInterrupt):
                return 0
            except (DevError, EmbeddedServerError) as exc:
                _say(f"error: {exc}")
                return 1
        finally:
            try:
                self._shutdown()
            finally:
                self._restore_signals(previous)

    def _start(self) -> None:
        check_exposure(self.host, self.env)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._stop_leftover_children()
        self._check_port_free()
        self._prepare_env()
        self._check_stop()

        if self.env.get("INCIDENT_DATABASE_URL"):
            _say("using INCIDENT_DATABASE_URL from the environment")
        else:
            _say(f"starting PostgreSQL in {self.state_dir / 'postgres'}")
            self.postgres = EmbeddedPostgres(self.state_dir / "postgres")
            self.env["INCIDENT_DATABASE_URL"] = self.postgres.start()
            # Backups need a pg_dump as new as the server; the system's may be older.
            self.env["PATH"] = os.pathsep.join(
                [str(self.postgres.bin_dir), self.env.get("PATH", os.defpath)]
            )
        self._check_stop()

        if self.env.get("INCIDENT_BROKER_URL"):
            _say("using INCIDENT_BROKER_URL from the environment")
        else:
            _say(f"starting Redis in {self.state_dir / 'redis'}")
            self.redis = EmbeddedRedis(self.state_dir / "redis")
            self.env["INCIDENT_BROKER_URL"] = self.redis.start()
        self._check_stop()

        self._migrate()
        self._spawn("api", "api", "--host", self.host, "--port", str(self.port))
        self._spawn("worker", "worker")
        self._spawn("beat", "beat", "--schedule", str(self.state_dir / "celerybeat-schedule"))
        self._record_children()
        self._wait_healthy()

    def _prepare_env(self) -> None:
        env = self.env
        env["INCIDENT_DEV_MODE"] = "1"
        env.setdefault("INCIDENT_BACKUP_DIR", str(self.state_dir / "backups"))
        env.setdefault("INCIDENT_PUBLIC_URL", self.base_url)
        env.setdefault("INCIDENT_LOG_FORMAT", "console")
        # The children must run this same `incident`, installed or not.
        package_root = str(Path(incident.__file__).resolve().parent.parent)
        paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if package_root not in paths:
            env["PYTHONPATH"] = os.pathsep.join([package_root, *paths])
        env.setdefault("PYTHONUNBUFFERED", "1")

    def _supervise(self) -> int:
        while True:
            self._check_stop()
            for child in self.children:
                code = child.proc.poll()
                if code is not None:
                    _say(f"{child.name} (pid {child.proc.pid}) {_describe_exit(code)}; stopping")
                    return code if code > 0 else 1
            time.sleep(_POLL)

    # -- steps -----------------------------------------------------------------------------

    def _check_port_free(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.host, self.port))
            except OSError as exc:
                raise DevError(
                    f"cannot listen on {self.host}:{self.port} ({exc.strerror}); is another "
                    "`incident dev` running? Choose another port with --port"
                ) from None

    def _migrate(self) -> None:
        _say("running migrations")
        proc = self._popen("migrate")
        deadline = time.monotonic() + MIGRATE_TIMEOUT
        try:
            while (code := proc.poll()) is None:
                self._check_stop()
                if time.monotonic() > deadline:
                    raise DevError(f"migrations did not finish within {MIGRATE_TIMEOUT:.0f}s")
                time.sleep(_POLL)
        finally:
            if proc.poll() is None:
                self._stop_group(proc, signal.SIGKILL)
                proc.wait()
        if code != 0:
            raise DevError(
                f"`incident migrate` {_describe_exit(code)} (its output is above); "
                f"database: {_shown_database_url(self.env['INCIDENT_DATABASE_URL'])}"
            )

    def _spawn(self, name: str, *args: str) -> None:
        self.children.append(_Child(name, self._popen(*args)))

    def _popen(self, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "incident", *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            process_group=0,
        )

    def _wait_healthy(self) -> None:
        url = f"{self.base_url}/healthz"
        _say(f"waiting for {url}")
        deadline = time.monotonic() + HEALTH_TIMEOUT
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            self._check_stop()
            for child in self.children:
                code = child.proc.poll()
                if code is not None:
                    raise DevError(f"{child.name} {_describe_exit(code)} during start-up")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
                    last_error = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                last_error = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:
                last_error = str(getattr(exc, "reason", exc))
            time.sleep(_POLL)
        raise DevError(
            f"{url} did not answer 200 within {HEALTH_TIMEOUT:.0f}s (last: {last_error})"
        )

    def _print_banner(self) -> None:
        url = self.base_url
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        labels = {"alertname": "HighErrorRate", "service": "api", "severity": "critical"}
        payload = {
            "version": "4",
            "groupKey": '{}:{alertname="HighErrorRate"}',
            "status": "firing",
            "receiver": "incident",
            "groupLabels": {"alertname": "HighErrorRate", "service": "api"},
            "commonLabels": labels,
            "commonAnnotations": {"summary": "5xx rate above 5% for 5 minutes"},
            "externalURL": "http://alertmanager.example:9093",
            "alerts": [
                {
                    "status": "firing",
                    "labels": labels,
                    "annotations": {"summary": "5xx rate above 5% for 5 minutes"},
                    "startsAt": now,
                    "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "http://prometheus.example:9090/graph",
                    "fingerprint": "8e1f3a6c2b9d4f70",
                }
            ],
        }
        # Refer to tokens through the shell, never print them.
        webhook_auth = api_auth = ""
        if self.env.get("INCIDENT_WEBHOOK_TOKEN"):
            webhook_auth = ' -H "Authorization: Bearer $INCIDENT_WEBHOOK_TOKEN"'
        if self.env.get("INCIDENT_API_TOKEN"):
            api_auth = ' -H "Authorization: Bearer $INCIDENT_API_TOKEN"'
        # Embedded URLs hold no password; the operator's own ones might.
        database = (
            self.env["INCIDENT_DATABASE_URL"] if self.postgres else "from INCIDENT_DATABASE_URL"
        )
        broker = self.env["INCIDENT_BROKER_URL"] if self.redis else "from INCIDENT_BROKER_URL"
        print(
            f"\nincident is running (state in {self.state_dir})\n"
            f"  console:   {url}/  (signed in as a local user)\n"
            f"  API:       {url}\n"
            f"  API docs:  {url}/docs\n"
            f"  database:  {database}\n"
            f"  broker:    {broker}\n"
            "\nSend an alert, then list incidents:\n"
            f"  curl -sS -X POST {url}/webhooks/alertmanager"
            f" -H 'Content-Type: application/json'{webhook_auth} \\\n"
            f"    -d {shlex.quote(json.dumps(payload, separators=(',', ':')))}\n"
            f"  curl -sS{api_auth} {url}/api/incidents\n"
            "\nPress Ctrl-C to stop.\n",
            flush=True,
        )

    # -- stopping --------------------------------------------------------------------------

    def _trap_signals(self) -> dict[int, object]:
        if threading.current_thread() is not threading.main_thread():
            return {}  # only the main thread may; SIGINT then arrives as KeyboardInterrupt
        previous: dict[int, object] = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    def _restore_signals(self, previous: dict[int, object]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only note it: the steps poll for it, so nothing is left half-started.
        self._signals.append(signum)

    def _check_stop(self) -> None:
        if self._signals:
            _say(f"{signal.Signals(self._signals[0]).name} received; stopping")
            raise _StopRequested

    def _shutdown(self) -> None:
        self._stop_children()
        for server, name in ((self.redis, "Redis"), (self.postgres, "PostgreSQL")):
            if server is None:
                continue
            _say(f"stopping {name}")
            try:
                server.stop()
            except (EmbeddedServerError, OSError, subprocess.SubprocessError, psutil.Error) as exc:
                # Keep going: the other server must stop too.
                _say(f"could not stop {name}: {exc}")
        self.redis = self.postgres = None

    def _stop_children(self) -> None:
        if not self.children:
            return
        _say("stopping " + ", ".join(c.name for c in self.children))
        signals_before = len(self._signals)
        for child in self.children:
            if child.proc.poll() is None:
                self._stop_group(child.proc, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while any(c.proc.poll() is None for c in self.children):
            if time.monotonic() > deadline or len(self._signals) > signals_before:
                break  # out of patience, or the user pressed Ctrl-C again
            time.sleep(0.1)
        for child in self.children:
            if child.proc.poll() is None:
                _say(f"{child.name} did not stop within {STOP_GRACE:.0f}s; killing it")
            # Also ends what a leader left behind in its group (Celery's pool processes).
            self._stop_group(child.proc, signal.SIGKILL)
            try:
                child.proc.wait(5)
            except subprocess.TimeoutExpired:
                _say(f"{child.name} (pid {child.proc.pid}) survives SIGKILL")
        self.children = []
        (self.state_dir / _CHILDREN_FILE).unlink(missing_ok=True)

    @staticmethod
    def _stop_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _record_children(self) -> None:
        # If this supervisor is killed outright, its children outlive it; the next run
        # stops them using this file (create times guard against reused pids).
        records = []
        for child in self.children:
            try:
                created = psutil.Process(child.proc.pid).create_time()
            except psutil.Error:
                continue
            records.append({"name": child.name, "pid": child.proc.pid, "created": created})
        (self.state_dir / _CHILDREN_FILE).write_text(json.dumps(records))

    def _stop_leftover_children(self) -> None:
        path = self.state_dir / _CHILDREN_FILE
        try:
            records = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        leftovers = []
        for record in records:
            try:
                proc = psutil.Process(record["pid"])
                if proc.create_time() == record["created"]:
                    leftovers.append(proc)
            except (psutil.Error, KeyError, TypeError):
                continue
        for proc in leftovers:
            _say(f"stopping a leftover process group from an earlier run (pid {proc.pid})")
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except OSError:
                pass
        _, alive = psutil.wait_procs(leftovers, timeout=STOP_GRACE)
        for proc in alive:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
        path.unlink(missing_ok=True)
