"""What lies in the backup directory: dumps, their manifests, and the last results.

A backup is ``incident-<UTC time>.dump`` plus ``incident-<UTC time>.manifest.json``. The
manifest is written last, atomically, after the dump is on disk, so a dump without one
is an interrupted backup and never counts as a good one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PREFIX = "incident-"
DUMP_SUFFIX = ".dump"
MANIFEST_SUFFIX = ".manifest.json"
PARTIAL_SUFFIX = ".partial"
LAST_BACKUP = "last-backup.json"
LAST_VERIFY = "last-verify.json"
MANIFEST_FORMAT = 1
# Leftovers of a crashed run are removed once surely abandoned: a run that is still
# writing one (beat and an operator's `incident backup create` may overlap) is younger.
ABANDONED_AFTER = timedelta(hours=24)


@dataclass(frozen=True)
class Backup:
    """A complete backup: a manifest that parses (the dump itself may since have gone)."""

    dump: Path
    manifest_path: Path
    manifest: dict[str, Any]

    @property
    def created_at(self) -> datetime:
        return datetime.fromisoformat(self.manifest["created_at"])

    @property
    def row_counts(self) -> dict[str, int]:
        return dict(self.manifest["row_counts"])


def utc(moment: datetime | None) -> datetime:
    if moment is None:
        return datetime.now(UTC)
    # A naive time is taken as UTC, the zone every backup name is written in.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def manifest_path_for(dump: Path) -> Path:
    return dump.with_name(dump.name.removesuffix(DUMP_SUFFIX) + MANIFEST_SUFFIX)


def fsync_directory(directory: Path) -> None:
    # A rename is durable only once the directory entry is.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_directory(path.parent)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def reserve_dump_path(backup_dir: Path, moment: datetime) -> tuple[Path, int]:
    """A fresh ``incident-<time>.dump`` name and the open descriptor of its partial file.

    The partial file is created exclusively, so two runs in the same second get two names.
    """
    stem = f"{PREFIX}{moment:%Y%m%dT%H%M%SZ}"
    for n in range(1, 1000):
        name = stem + (f"-{n}" if n > 1 else "") + DUMP_SUFFIX
        dump = backup_dir / name
        if dump.exists() or manifest_path_for(dump).exists():
            continue
        try:
            fd = os.open(partial_path_for(dump), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        return dump, fd
    raise FileExistsError(f"no free backup name for {stem} in {backup_dir}")


def partial_path_for(dump: Path) -> Path:
    return dump.with_name(f".{dump.name}{PARTIAL_SUFFIX}")


def _manifests(backup_dir: Path) -> Iterator[Path]:
    with contextlib.suppress(FileNotFoundError):
        for path in backup_dir.iterdir():
            if path.name.startswith(PREFIX) and path.name.endswith(MANIFEST_SUFFIX):
                yield path


def _valid_manifest(data: dict[str, Any] | None) -> bool:
    if data is None or data.get("format") != MANIFEST_FORMAT:
        return False
    try:
        datetime.fromisoformat(data["created_at"])
        return (
            isinstance(data["file"], str)
            and isinstance(data["size"], int)
            and isinstance(data["sha256"], str)
            and isinstance(data["row_counts"], dict)
        )
    except (KeyError, TypeError, ValueError):
        return False


def list_backups(backup_dir: Path) -> tuple[list[Backup], list[Path]]:
    """(complete backups, newest first; manifests that do not parse)."""
    backups, unreadable = [], []
    for manifest_path in _manifests(backup_dir):
        data = read_json(manifest_path)
        if not _valid_manifest(data):
            unreadable.append(manifest_path)
            continue
        assert data is not None
        dump = manifest_path.with_name(Path(data["file"]).name)
        backups.append(Backup(dump=dump, manifest_path=manifest_path, manifest=data))
    backups.sort(key=lambda b: (b.created_at, b.dump.name), reverse=True)
    return backups, sorted(unreadable)


def incomplete_dumps(backup_dir: Path) -> list[Path]:
    """Dumps with no readable manifest, and our hidden work files (partial dumps,
    manifests not yet renamed): what interrupted backups leave."""
    complete, _ = list_backups(backup_dir)
    named = {b.dump.name for b in complete}
    found = []
    with contextlib.suppress(FileNotFoundError):
        for path in backup_dir.iterdir():
            is_dump = path.name.startswith(PREFIX) and path.name.endswith(DUMP_SUFFIX)
            is_work_file = path.name.startswith("." + PREFIX)
            if (is_dump and path.name not in named) or is_work_file:
                found.append(path)
    return sorted(found)


def prune(backup_dir: Path, keep: int, just_written: Path) -> list[Path]:
    """Delete all but the ``keep`` newest complete backups, and abandoned leftovers.

    The backup just written survives whatever its time says. Returns the dumps deleted.
    """
    complete, unreadable = list_backups(backup_dir)
    others = [b for b in complete if b.dump != just_written]
    deleted = []
    for backup in others[max(keep - 1, 0) :]:
        # Manifest first: a crash in between leaves an incomplete dump, never a
        # manifest that vouches for a file that is gone.
        _unlink(backup.manifest_path)
        _unlink(backup.dump)
        deleted.append(backup.dump)
    cutoff = time.time() - ABANDONED_AFTER.total_seconds()
    for path in [*incomplete_dumps(backup_dir), *unreadable]:
        try:
            if path.stat().st_mtime < cutoff and path != just_written:
                _unlink(path)
                deleted.append(path)
        except FileNotFoundError:
            pass
    return deleted


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not delete old backup file %s: %s", path, exc)


def record_result(backup_dir: Path, name: str, result: dict[str, Any]) -> None:
    """Keep the latest outcome in ``name``, remembering when the last good one was."""
    previous = read_json(backup_dir / name) or {}
    last_ok = result["time"] if result["ok"] else previous.get("last_ok_time")
    try:
        backup_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomically(backup_dir / name, {**result, "last_ok_time": last_ok})
    except OSError as exc:
        # The outcome itself is returned to the caller; losing the record must not hide it.
        log.warning("could not record %s in %s: %s", name, backup_dir, exc)


def _unix(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def backup_status(backup_dir: Path) -> dict[str, Any]:
    """What /metrics reports: the newest complete backup and the last runs' outcomes.

    Times are Unix seconds (None when unknown), so a gauge can export them as they are
    and an alert rule can compare them with ``time()``.
    """
    backup_dir = Path(backup_dir)
    complete, _ = list_backups(backup_dir)
    newest = complete[0] if complete else None
    last_backup = read_json(backup_dir / LAST_BACKUP) or {}
    last_verify = read_json(backup_dir / LAST_VERIFY) or {}
    return {
        "backup_dir": str(backup_dir),
        "backups": len(complete),
        "newest_backup_file": str(newest.dump) if newest else None,
        "newest_backup_time": newest.created_at.timestamp() if newest else None,
        "newest_backup_size": newest.manifest["size"] if newest else None,
        "last_backup_time": _unix(last_backup.get("time")),
        "last_backup_ok": last_backup.get("ok"),
        "last_backup_problems": list(last_backup.get("problems", [])),
        "last_backup_seconds": last_backup.get("seconds"),
        "last_good_backup_time": _unix(last_backup.get("last_ok_time")),
        "last_verify_time": _unix(last_verify.get("time")),
        "last_verify_ok": last_verify.get("ok"),
        "last_verify_problems": list(last_verify.get("problems", [])),
        "last_verify_mode": last_verify.get("mode"),
        "last_restore_seconds": last_verify.get("restore_seconds"),
        "last_good_verify_time": _unix(last_verify.get("last_ok_time")),
    }


def format_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_age(age: timedelta) -> str:
    seconds = int(age.total_seconds())
    if seconds < 0:
        return f"{format_age(-age)} in the future"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {seconds} s"
    return f"{seconds} s"
