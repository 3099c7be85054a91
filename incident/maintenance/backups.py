"""Database backups: ``pg_dump -Fc`` into the backup directory, with a manifest, keeping
the newest ``keep``; and their verification (``verify_latest``, in backup_verify).

The manifest's row counts come from the very snapshot pg_dump dumps: a REPEATABLE READ
transaction exports its snapshot, counts the rows, and stays open while pg_dump runs
with ``--snapshot``. Rows written meanwhile are in neither, so a restore compares equal.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psycopg

from incident.maintenance.backup_files import (
    LAST_BACKUP,
    MANIFEST_FORMAT,
    backup_status,
    format_size,
    fsync_directory,
    manifest_path_for,
    partial_path_for,
    prune,
    record_result,
    reserve_dump_path,
    utc,
    write_json_atomically,
)
from incident.maintenance.backup_verify import VerifyResult, verify_latest
from incident.maintenance.pgtools import (
    BackupToolError,
    PgTarget,
    application_tables,
    count_rows,
    find_tool,
    major_of,
    server_version,
    stderr_tail,
)

__all__ = [
    "BackupError",
    "BackupResult",
    "VerifyResult",
    "backup_status",
    "create_backup",
    "verify_latest",
]

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
_CHUNK = 1024 * 1024
_PROGRESS_EVERY = 10.0  # seconds between "… written so far" lines on a long dump
# pg_dump queues for its table locks behind anyone waiting for an exclusive lock (a
# migration), and that waiter queues behind our snapshot transaction's own locks: a
# cycle PostgreSQL cannot see. The timeout breaks it with an error instead of a hang.
_LOCK_WAIT_TIMEOUT = "2min"


class BackupError(RuntimeError):
    """A backup could not be made; the message says what failed, naming the file."""


@dataclass(frozen=True)
class BackupResult:
    path: Path
    manifest_path: Path
    size: int
    sha256: str
    row_counts: dict[str, int]
    seconds: float
    created_at: datetime
    server_version: str
    pg_dump_version: str
    deleted: list[Path] = field(default_factory=list)  # older backups removed by `keep`


def _quiet(_: str) -> None:
    pass


def create_backup(
    database_url: str,
    backup_dir: Path,
    *,
    keep: int,
    progress: Progress | None = None,
    now: datetime | None = None,
) -> BackupResult:
    """Dump the database into ``backup_dir``, write its manifest, keep the ``keep`` newest.

    Raises BackupError (recorded in ``last-backup.json`` too) when no backup was made.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    say = progress or _quiet
    backup_dir = Path(backup_dir)
    moment = utc(now)
    try:
        try:
            target = PgTarget.from_url(database_url)
        except ValueError as exc:
            raise BackupError(f"cannot back up: {exc}") from None
        result = _create(target, backup_dir, keep, say, moment)
    except BackupError as exc:
        record_result(
            backup_dir,
            LAST_BACKUP,
            {"time": moment.isoformat(), "ok": False, "problems": [str(exc)]},
        )
        raise
    record_result(
        backup_dir,
        LAST_BACKUP,
        {
            "time": moment.isoformat(),
            "ok": True,
            "problems": [],
            "file": str(result.path),
            "size": result.size,
            "sha256": result.sha256,
            "seconds": result.seconds,
        },
    )
    return result


def _create(
    target: PgTarget, backup_dir: Path, keep: int, say: Progress, moment: datetime
) -> BackupResult:
    try:
        backup_dir.mkdir(parents=True, exist_ok=True)
        dump, fd = reserve_dump_path(backup_dir, moment)
    except OSError as exc:
        raise BackupError(f"cannot write backups into {backup_dir}: {exc}") from None
    partial = partial_path_for(dump)
    started = time.monotonic()
    try:
        with os.fdopen(fd, "wb") as out:
            manifest = _dump(target, out, dump, say)
        partial.replace(dump)
        fsync_directory(backup_dir)
    except OSError as exc:  # a full disk, a directory gone
        partial.unlink(missing_ok=True)
        raise BackupError(f"could not write {dump}: {exc}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    seconds = round(time.monotonic() - started, 3)
    manifest.update(created_at=moment.isoformat(), seconds=seconds)
    manifest_path = manifest_path_for(dump)
    try:
        write_json_atomically(manifest_path, manifest)
    except OSError as exc:
        # Without its manifest the dump is no backup: do not leave it looking like one.
        dump.unlink(missing_ok=True)
        raise BackupError(f"could not write the manifest {manifest_path}: {exc}") from None
    say(f"wrote {dump} ({format_size(manifest['size'])}) in {seconds:.1f} s")
    deleted = prune(backup_dir, keep, dump)
    if deleted:
        say(f"deleted {len(deleted)} older backup file(s), keeping {keep}")
    return BackupResult(
        path=dump,
        manifest_path=manifest_path,
        size=manifest["size"],
        sha256=manifest["sha256"],
        row_counts=manifest["row_counts"],
        seconds=seconds,
        created_at=moment,
        server_version=manifest["server_version"],
        pg_dump_version=manifest["pg_dump_version"],
        deleted=deleted,
    )


def _dump(target: PgTarget, out, dump: Path, say: Progress) -> dict:
    """Run pg_dump inside an exported snapshot into ``out``; the manifest minus its times."""
    try:
        conn = target.connect()
    except psycopg.Error as exc:
        raise BackupError(f"cannot connect to {target.label} to back it up: {exc}") from None
    with conn:
        try:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
            version_num, version = server_version(conn)
            tables = application_tables(conn)
            row_counts = count_rows(conn, tables)
        except psycopg.Error as exc:
            raise BackupError(f"cannot read {target.label} for its backup: {exc}") from None
        try:
            tool = find_tool("pg_dump", major_of(version_num), f"the server (PostgreSQL {version})")
        except BackupToolError as exc:
            raise BackupError(str(exc)) from None
        say(f"dumping {target.label} with pg_dump {tool.version} into {dump}…")
        size, sha256 = _run_pg_dump(tool.path, target, snapshot, out, dump, say)
        # The snapshot transaction ends only now, with pg_dump done.
        conn.rollback()
    return {
        "format": MANIFEST_FORMAT,
        "file": dump.name,
        "size": size,
        "sha256": sha256,
        "row_counts": row_counts,
        "server_version": version,
        "server_version_num": version_num,
        "pg_dump_version": tool.version,
        "pg_dump_major": tool.major,
        "database": target.database,
    }


def _run_pg_dump(
    pg_dump: Path, target: PgTarget, snapshot: str, out, dump: Path, say: Progress
) -> tuple[int, str]:
    argv = [
        str(pg_dump),
        "--format=custom",
        "--no-password",
        f"--snapshot={snapshot}",
        f"--lock-wait-timeout={_LOCK_WAIT_TIMEOUT}",
        f"--dbname={target.conninfo}",
    ]
    digest = hashlib.sha256()
    size = 0
    next_note = time.monotonic() + _PROGRESS_EVERY
    # Reading stdout here hashes the dump as it is written, in one pass; stderr goes to a
    # file so a chatty pg_dump cannot block on a full pipe while we read.
    with tempfile.TemporaryFile() as errors:
        try:
            proc = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=errors,
                stdin=subprocess.DEVNULL,
                env=target.env(),
            )
        except OSError as exc:
            raise BackupError(f"cannot run {pg_dump}: {exc}") from None
        try:
            assert proc.stdout is not None
            while chunk := proc.stdout.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                if time.monotonic() >= next_note:
                    say(f"… {format_size(size)} written so far")
                    next_note = time.monotonic() + _PROGRESS_EVERY
            code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
        errors.seek(0)
        stderr = errors.read().decode(errors="replace")
    if code != 0:
        raise BackupError(
            f"pg_dump failed (exit {code}) backing up {target.label} into {dump}: "
            f"{stderr_tail(stderr)}"
        )
    try:
        out.flush()
        os.fsync(out.fileno())
    except OSError as exc:
        raise BackupError(f"could not write {dump}: {exc}") from None
    return size, digest.hexdigest()
