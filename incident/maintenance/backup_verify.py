"""Is the newest backup good? Young enough (the recovery-point objective), intact (its
SHA-256), readable by ``pg_restore --list``, and with ``mode="restore"`` restorable: into
a scratch database whose row counts must equal the manifest's, timed (the recovery-time
figure), and always dropped afterwards.

Every failed check is a problem sentence naming the file; checks go on after a failure
where they still can, so one run says everything that is wrong.
"""

from __future__ import annotations

import hashlib
import secrets
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import psycopg

from incident.maintenance.backup_files import (
    LAST_VERIFY,
    Backup,
    format_age,
    format_size,
    incomplete_dumps,
    list_backups,
    record_result,
    utc,
)
from incident.maintenance.pgtools import (
    BackupToolError,
    PgTarget,
    PgTool,
    application_tables,
    count_rows,
    create_database,
    drop_database,
    find_tool,
    major_of,
    server_version,
    stderr_tail,
)
from incident.rules.durations import format_duration

Progress = Callable[[str], None]
SCRATCH_PREFIX = "incident_verify_"
_LIST_TIMEOUT = 300
_HASH_CHUNK = 1024 * 1024


@dataclass
class VerifyResult:
    ok: bool
    problems: list[str]
    backup: Path | None
    backup_age: timedelta | None
    restore_seconds: float | None  # how long pg_restore took: the recovery-time figure
    row_counts: dict[str, int]  # as restored, compared with expected_row_counts
    expected_row_counts: dict[str, int]  # from the manifest
    mode: str
    checked_at: datetime
    scratch_database: str | None = None  # created and dropped again, for the restore


@dataclass
class _Verification:
    target: PgTarget
    backup_dir: Path
    max_age: timedelta
    mode: str
    say: Progress
    checked_at: datetime
    problems: list[str] = field(default_factory=list)
    backup: Backup | None = None
    restore_seconds: float | None = None
    restored_counts: dict[str, int] = field(default_factory=dict)
    scratch_database: str | None = None

    def run(self) -> None:
        complete, unreadable = list_backups(self.backup_dir)
        for manifest in unreadable:
            self.problems.append(f"{manifest} is not a readable backup manifest")
        if not complete:
            self.problems.append(self._no_backup())
            return
        backup = self.backup = complete[0]
        age = self.checked_at - backup.created_at
        size = format_size(backup.manifest["size"])
        self.say(f"newest backup: {backup.dump} ({size}, {format_age(age)} old)")
        if age > self.max_age:
            self.problems.append(
                f"{backup.dump} is the newest backup and is {format_age(age)} old, "
                f"older than max_age {format_duration(self.max_age)}"
            )
        if not backup.dump.is_file():
            self.problems.append(
                f"{backup.dump} is missing although its manifest {backup.manifest_path.name} "
                "is there"
            )
            return
        self._check_checksum(backup)
        dump_major = int(backup.manifest.get("pg_dump_major", 0))
        try:
            tool = find_tool("pg_restore", dump_major, f"reading {backup.dump.name}")
        except BackupToolError as exc:
            self.problems.append(f"{backup.dump} cannot be checked: {exc}")
            return
        self._check_list(backup, tool)
        if self.mode == "restore":
            self._check_restore(backup, dump_major)

    def _no_backup(self) -> str:
        if not self.backup_dir.is_dir():
            return f"no backup: the backup directory {self.backup_dir} does not exist"
        incomplete = incomplete_dumps(self.backup_dir)
        if incomplete:
            return (
                f"no complete backup in {self.backup_dir}: {incomplete[0].name} and "
                f"{len(incomplete) - 1} other file(s) are interrupted backups with no manifest"
            )
        return f"no backup in {self.backup_dir}"

    def _check_checksum(self, backup: Backup) -> None:
        digest = hashlib.sha256()
        size = 0
        try:
            with backup.dump.open("rb") as f:
                while chunk := f.read(_HASH_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
        except OSError as exc:
            self.problems.append(f"{backup.dump} cannot be read: {exc.strerror or exc}")
            return
        expected_size, expected_sha = backup.manifest["size"], backup.manifest["sha256"]
        if size != expected_size:
            self.problems.append(
                f"{backup.dump} is {size} bytes but its manifest says {expected_size} "
                f"({'truncated' if size < expected_size else 'grown'} since it was written)"
            )
        if digest.hexdigest() != expected_sha:
            self.problems.append(
                f"{backup.dump} does not match the SHA-256 in its manifest "
                f"({digest.hexdigest()[:16]}… instead of {expected_sha[:16]}…): it is damaged"
            )
        else:
            self.say(f"checksum matches (sha256 {expected_sha[:16]}…)")

    def _check_list(self, backup: Backup, tool: PgTool) -> None:
        try:
            done = subprocess.run(
                [str(tool.path), "--list", str(backup.dump)],
                capture_output=True,
                text=True,
                errors="replace",
                timeout=_LIST_TIMEOUT,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.problems.append(f"pg_restore --list could not run on {backup.dump}: {exc}")
            return
        if done.returncode != 0:
            self.problems.append(
                f"pg_restore --list cannot read {backup.dump} (exit {done.returncode}): "
                f"{stderr_tail(done.stderr)}"
            )
            return
        entries = sum(1 for line in done.stdout.splitlines() if line and not line.startswith(";"))
        self.say(f"pg_restore {tool.version} --list reads it ({entries} entries)")

    def _check_restore(self, backup: Backup, dump_major: int) -> None:
        target = self.target
        try:
            with target.connect(autocommit=True) as admin:
                version_num, version = server_version(admin)
                tool = find_tool(
                    "pg_restore",
                    max(major_of(version_num), dump_major),
                    f"restoring {backup.dump.name} (pg_dump "
                    f"{backup.manifest.get('pg_dump_version', '?')}) into PostgreSQL {version}",
                )
                name = f"{SCRATCH_PREFIX}{secrets.token_hex(4)}"
                create_database(admin, name)
        except BackupToolError as exc:
            self.problems.append(f"{backup.dump} cannot be restored: {exc}")
            return
        except psycopg.errors.InsufficientPrivilege:
            self.problems.append(
                f"{backup.dump} cannot be restored to verify it: role {target.user} may not "
                f"create the scratch database on {target.host}:{target.port} (grant it: "
                f"ALTER ROLE {target.user} CREATEDB), or verify with mode list"
            )
            return
        except psycopg.Error as exc:
            self.problems.append(
                f"{backup.dump} cannot be restored: no scratch database on {target.label}: {exc}"
            )
            return
        self.scratch_database = name
        try:
            self._restore_into(backup, tool, target.with_database(name))
        finally:
            self._drop(name, version_num)

    def _restore_into(self, backup: Backup, tool: PgTool, scratch: PgTarget) -> None:
        self.say(f"restoring into {scratch.database} with pg_restore {tool.version}…")
        argv = [
            str(tool.path),
            "--no-owner",
            "--exit-on-error",
            "--no-password",
            f"--dbname={scratch.conninfo}",
            str(backup.dump),
        ]
        started = time.monotonic()
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                errors="replace",
                env=scratch.env(),
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            self.problems.append(f"pg_restore could not run to restore {backup.dump}: {exc}")
            return
        seconds = time.monotonic() - started
        if done.returncode != 0:
            self.problems.append(
                f"pg_restore failed (exit {done.returncode}) restoring {backup.dump} into "
                f"a scratch database: {stderr_tail(done.stderr)}"
            )
            return
        self.restore_seconds = round(seconds, 3)
        self.say(f"restored in {seconds:.1f} s")
        try:
            with scratch.connect(autocommit=True) as conn:
                self.restored_counts = count_rows(conn, application_tables(conn))
        except psycopg.Error as exc:
            self.problems.append(f"the restore of {backup.dump} cannot be counted: {exc}")
            return
        self._compare(backup)

    def _compare(self, backup: Backup) -> None:
        expected, restored = backup.row_counts, self.restored_counts
        mismatches = []
        for table in sorted(expected.keys() | restored.keys()):
            want, got = expected.get(table), restored.get(table)
            if want is None:
                mismatches.append(
                    f"{backup.dump} restores table {table} ({got} rows), which its manifest "
                    "does not list"
                )
            elif got is None:
                mismatches.append(
                    f"{backup.dump} does not restore table {table}, which its manifest lists "
                    f"with {want} rows"
                )
            elif want != got:
                mismatches.append(
                    f"{backup.dump} restores {got} rows into {table} but its manifest says {want}"
                )
        self.problems.extend(mismatches)
        if not mismatches:
            self.say(f"row counts match ({len(expected)} tables)")

    def _drop(self, name: str, version_num: int) -> None:
        # A fresh connection: the one that created it may have died during a long restore.
        try:
            with self.target.connect(autocommit=True) as admin:
                drop_database(admin, name, version_num)
        except psycopg.Error as exc:
            self.problems.append(
                f"the scratch database {name} used to verify {self.backup_dir} could not be "
                f"dropped: {exc}"
            )
            return
        self.say(f"dropped {name}")


def verify_latest(
    database_url: str,
    backup_dir: Path,
    *,
    max_age: timedelta,
    mode: Literal["restore", "list"],
    progress: Progress | None = None,
    now: datetime | None = None,
) -> VerifyResult:
    """Check the newest backup in ``backup_dir``; never raises for a bad backup.

    The outcome is also kept in ``last-verify.json`` for ``backup_status``.
    """
    if mode not in ("restore", "list"):
        raise ValueError(f"mode must be 'restore' or 'list', got {mode!r}")
    checked_at = utc(now)
    check = _Verification(
        target=PgTarget.from_url(database_url),  # a malformed URL is a caller's bug: raise
        backup_dir=Path(backup_dir),
        max_age=max_age,
        mode=mode,
        say=progress or (lambda _: None),
        checked_at=checked_at,
    )
    check.run()
    backup = check.backup
    result = VerifyResult(
        ok=not check.problems,
        problems=check.problems,
        backup=backup.dump if backup else None,
        backup_age=checked_at - backup.created_at if backup else None,
        restore_seconds=check.restore_seconds,
        row_counts=check.restored_counts,
        expected_row_counts=backup.row_counts if backup else {},
        mode=mode,
        checked_at=checked_at,
        scratch_database=check.scratch_database,
    )
    record_result(
        check.backup_dir,
        LAST_VERIFY,
        {
            "time": checked_at.isoformat(),
            "ok": result.ok,
            "problems": result.problems,
            "mode": mode,
            "file": str(result.backup) if result.backup else None,
            "backup_age_seconds": (
                result.backup_age.total_seconds() if result.backup_age is not None else None
            ),
            "restore_seconds": result.restore_seconds,
            "row_counts": result.row_counts,
        },
    )
    return result
