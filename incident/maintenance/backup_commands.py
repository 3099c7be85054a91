"""``incident backup create`` and ``incident backup verify``, minus the argument parsing.

Settings come from the environment and the rules file's ``maintenance.backup``; flags
override them. Progress goes to stderr, the outcome to stdout; the return value is the
exit code: 0 done, 1 the backup or the verification failed, 2 a bad setting.

A run on the configured backup directory raises or resolves the ``IncidentBackupFailing``
internal incident exactly as beat's runs do, through the ``MaintenanceJobs`` that
``jobs`` builds (the CLI passes one from a ``Context``); ``create`` verifies the new
backup at once, as the scheduled backup does. A run on another ``--backup-dir`` says
nothing about the configured backups and leaves the incident alone. Failing to record
the incident (Redis or PostgreSQL away) is reported, and does not change the exit code.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TextIO

from incident.config import Settings, get_settings
from incident.maintenance.backup_files import format_age, format_size
from incident.maintenance.backups import BackupError, create_backup, verify_latest
from incident.maintenance.jobs import MaintenanceJobs
from incident.rules import Rules, RulesError, load_rules
from incident.rules.durations import format_duration, parse_duration

_NAME = "incident backup"

JobsFactory = Callable[[Settings, Rules], MaintenanceJobs]


def _rules(err: TextIO) -> Rules | None:
    try:
        return load_rules(get_settings().rules_file)
    except RulesError as exc:
        print(f"{_NAME}: {exc}", file=err)
        return None


class _Incident:
    """The backup incident, when this run checks the configured directory."""

    def __init__(self, settings: Settings, rules: Rules, directory: Path,
                 jobs: JobsFactory | None, err: TextIO) -> None:
        self.settings, self.rules, self.jobs, self.err = settings, rules, jobs, err
        self.tracked = jobs is not None and directory.resolve() == settings.backup_dir.resolve()

    def record(self, step: Callable[[MaintenanceJobs], object]) -> None:
        if not self.tracked or self.jobs is None:
            return
        try:
            step(self.jobs(self.settings, self.rules))
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            print(f"{_NAME}: could not update the IncidentBackupFailing incident: {reason}",
                  file=self.err)


def _progress(err: TextIO):
    def say(line: str) -> None:
        print(f"{_NAME}: {line}", file=err, flush=True)

    return say


def _context(err: TextIO):
    """Settings, the database URL and the rules (None: already reported)."""
    settings = get_settings()
    return settings, settings.require_database_url(), _rules(err)


def create(
    *,
    backup_dir: Path | None = None,
    keep: int | None = None,
    jobs: JobsFactory | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    settings, database_url, rules = _context(err)
    if rules is None:
        return 2
    policy = rules.maintenance.backup
    if keep is not None and keep < 1:
        print(f"{_NAME}: --keep must be at least 1, got {keep}", file=err)
        return 2
    directory = backup_dir or settings.backup_dir
    incident = _Incident(settings, rules, directory, jobs, err)
    try:
        result = create_backup(
            database_url, directory, keep=keep or policy.keep, progress=_progress(err)
        )
    except BackupError as exc:
        print(f"{_NAME}: backup FAILED: {exc}", file=err)
        incident.record(lambda jobs, error=exc: jobs.backup_failed(error))
        return 1
    rows = sum(result.row_counts.values())
    print(
        f"backup written: {result.path} ({format_size(result.size)}, {rows} rows in "
        f"{len(result.row_counts)} tables, sha256 {result.sha256}) in {result.seconds:.1f} s",
        file=out,
    )
    # As the scheduled backup: verified at once, which also resolves the incident.
    return verify(backup_dir=backup_dir, jobs=jobs, out=out, err=err)


def verify(
    *,
    backup_dir: Path | None = None,
    max_age: str | None = None,
    mode: str | None = None,
    jobs: JobsFactory | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    settings, database_url, rules = _context(err)
    if rules is None:
        return 2
    policy = rules.maintenance.backup
    age_limit: timedelta = policy.max_age
    if max_age is not None:
        try:
            age_limit = parse_duration(max_age)
        except ValueError as exc:
            print(f"{_NAME}: --max-age: {exc}", file=err)
            return 2
    chosen_mode = mode or policy.verify
    directory = backup_dir or settings.backup_dir
    result = verify_latest(
        database_url,
        directory,
        max_age=age_limit,
        mode=chosen_mode,  # type: ignore[arg-type]  # argparse and the rules allow only these
        progress=_progress(err),
    )
    _Incident(settings, rules, directory, jobs, err).record(
        lambda j: j.verification_done(result)
    )
    if not result.ok:
        print(f"{_NAME}: verification FAILED ({len(result.problems)} problem(s)):", file=err)
        for problem in result.problems:
            print(f"  - {problem}", file=err)
        return 1
    assert result.backup is not None and result.backup_age is not None
    how = (
        f"restored in {result.restore_seconds:.1f} s, row counts match"
        if result.restore_seconds is not None
        else "checksum and pg_restore --list"
    )
    print(
        f"backup verified: {result.backup} ({how}; {format_age(result.backup_age)} old, "
        f"max_age {format_duration(age_limit)})",
        file=out,
    )
    return 0
