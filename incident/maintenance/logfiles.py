"""Rotation of the JSON log files in ``INCIDENT_LOG_DIR`` while processes keep writing.

Every process appends to ``{log_dir}/{process}.log`` through a
``WatchedFileHandler`` (see ``incident.logging``): before each line it stats
the path, and when the inode there is not the one it holds open, it reopens
the path. Several processes may share one file (a worker and its prefork pool
children, uvicorn's workers); each opened it with ``O_APPEND``, so their lines
never overwrite one another.

Rotation renames ``NAME.log`` to ``NAME.log.YYYYmmddTHHMMSSZ``. A rename is
atomic and keeps the inode, so nothing is lost:

* a writer that has not written since the rename stats the path on its next
  line, finds the new file missing or different, and opens a fresh
  ``NAME.log``;
* a writer that stat'ed the path just before the rename writes that one line
  into the renamed file, where it is kept like every line before it.

The only writes a rotated file can still receive are those second kind: one
line per writer, issued within one ``emit`` of the rename. Compressing means
deleting the original afterwards, and a line written into it after it was
copied would be lost. So a rotated file is compressed (or deleted while still
uncompressed) only when it has been idle for ``idle_grace``: its mtime (every
write moves it) and its ctime (the rename moved it) are both older than that,
and it was not rotated by the same call. A writer that stat'ed before the
rename and has still not written ``idle_grace`` (60 s by default) later would
have to be stalled inside one ``emit`` for that long. The copy itself is
checked too: if the file's size or mtime changed while it was being gzipped,
the attempt is dropped and the next run tries again.

Besides the periodic rotation every ``every``, a size check rotates only the
live files that have reached ``max_size``. It is run by beat every
``SIZE_CHECK_SECONDS`` (worker/app.py) rather than by each writing process:
rotation, naming, compression and the idle rule then stay in this one place
under one lock, and a writer's hot path stays one stat per line. A file can
therefore outgrow ``max_size`` by what is written between two checks.

Log files are ``LOG_FILE_MODE`` (0640): writers create them so, a rotation
narrows a file that an older version created wider, and compressed copies are
created with it.

Runs are serialised by an ``flock`` on ``.rotation.lock`` in the directory, so
a duplicated task finds the lock held and does nothing: two rotators could
otherwise pick the same rotated name in the same second.

Only names this package writes are touched: ``NAME.log`` (``NAME`` as
``incident.logging`` accepts it), ``NAME.log.STAMP[-N][.gz]`` and our own
``.NAME.log.STAMP[-N].gz.partial`` leftovers. Other files, links and
directories are left alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import gzip
import os
import re
import shutil
import stat
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from incident.logging import LOG_FILE_MODE, PROCESS_NAME, get_logger
from incident.rules.maintenance import LogRotation

log = get_logger(__name__)

STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
DEFAULT_IDLE_GRACE = timedelta(seconds=60)
LOCK_NAME = ".rotation.lock"
# How often beat runs the size check (rotate_logs with oversized_only=True).
SIZE_CHECK_SECONDS = 30.0

_LIVE = re.compile(rf"(?:{PROCESS_NAME.pattern})\.log")
# `-N` tells apart two rotations of one file within the same second.
_ROTATED_NAME = rf"(?:{PROCESS_NAME.pattern})\.log\.(?P<stamp>\d{{8}}T\d{{6}}Z)(?:-[1-9]\d*)?"
_ROTATED = re.compile(rf"{_ROTATED_NAME}(?P<gz>\.gz)?")
_PARTIAL = re.compile(rf"\.{_ROTATED_NAME}\.gz\.partial")

_COPY_CHUNK = 1 << 20


@dataclasses.dataclass
class RotationReport:
    """What one run did. ``bytes_freed`` counts deleted files and gzip's savings."""

    rotated: int = 0
    compressed: int = 0
    deleted: int = 0
    bytes_freed: int = 0
    # Another run held the lock, so this one did nothing.
    busy: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class _Rotated:
    path: Path
    rotated_at: datetime
    compressed: bool


def rotate_logs(
    log_dir: Path,
    policy: LogRotation,
    *,
    now: datetime | None = None,
    idle_grace: timedelta = DEFAULT_IDLE_GRACE,
    oversized_only: bool = False,
) -> RotationReport:
    """Rotate every non-empty live log, then delete and compress old rotations.

    With ``oversized_only``, only live logs of ``policy.max_size`` or more are
    rotated (the size check); old rotations are handled the same either way.

    ``now`` (default: the clock; naive means UTC) stamps the new names and
    decides which rotations are older than ``policy.compress_after`` /
    ``policy.delete_after``, judged by the stamp in their names. The idle check
    against ``idle_grace`` always uses the real clock and the files' mtime and
    ctime, since it guards against writers that are running now. Needs no
    settings, broker or database: a Celery task, a CLI or a test can call it.
    """
    moment = _utc(now) if now is not None else datetime.now(UTC)
    report = RotationReport()
    if not log_dir.is_dir():
        log.info("log rotation skipped: no log directory", log_dir=str(log_dir))
        return report
    with _exclusive(log_dir) as acquired:
        if not acquired:
            report.busy = True
            log.info("log rotation skipped: another run holds the lock", log_dir=str(log_dir))
            return report
        _remove_partials(log_dir)
        minimum = policy.max_size if oversized_only else 1
        fresh = _rotate_live_files(log_dir, moment, report, minimum)
        for rotated in _rotated_files(log_dir):
            if rotated.path in fresh and idle_grace > timedelta(0):
                continue
            _expire_or_compress(rotated, policy, moment, idle_grace, report)
    # The size check runs every few seconds; only what it did is worth a line.
    quiet = oversized_only and not (report.rotated or report.compressed or report.deleted)
    (log.debug if quiet else log.info)(
        "log rotation finished", log_dir=str(log_dir), oversized_only=oversized_only,
        **report.as_dict(),
    )
    return report


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


@contextlib.contextmanager
def _exclusive(log_dir: Path) -> Iterator[bool]:
    fd = os.open(log_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        # Closing releases the lock. The file stays: unlinking a lock file lets
        # a waiter lock the old inode while a newcomer locks a new one.
        os.close(fd)


def _regular(path: Path) -> os.stat_result | None:
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return None
    return status if stat.S_ISREG(status.st_mode) else None


def _remove_partials(log_dir: Path) -> None:
    # With the lock held no other run is writing one: these are from a crash.
    for entry in os.scandir(log_dir):
        if _PARTIAL.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                log.info("removed an unfinished compression", file=entry.name)


def _rotate_live_files(
    log_dir: Path, moment: datetime, report: RotationReport, minimum: int
) -> set[Path]:
    """Rename each live log of at least ``minimum`` bytes (never an empty one)."""
    fresh: set[Path] = set()
    for entry in sorted(os.scandir(log_dir), key=lambda e: e.name):
        if not _LIVE.fullmatch(entry.name):
            continue
        path = Path(entry.path)
        status = _regular(path)
        if status is None or status.st_size == 0 or status.st_size < minimum:
            continue
        target = _free_rotated_name(path, moment)
        try:
            os.rename(path, target)
        except FileNotFoundError:
            continue
        _narrow_mode(target, status)
        fresh.add(target)
        report.rotated += 1
    if fresh:
        _fsync_dir(log_dir)
    return fresh


def _narrow_mode(path: Path, status: os.stat_result) -> None:
    mode = stat.S_IMODE(status.st_mode)
    if mode & ~LOG_FILE_MODE:
        # Not ours to change (another user's file on a shared volume): keep rotating.
        with contextlib.suppress(PermissionError, FileNotFoundError):
            os.chmod(path, mode & LOG_FILE_MODE)


def _free_rotated_name(live: Path, moment: datetime) -> Path:
    base = f"{live.name}.{moment.strftime(STAMP_FORMAT)}"
    candidate, n = base, 0
    # The compressed name counts as taken too: compressing into it would replace it.
    while any(os.path.lexists(live.with_name(name)) for name in (candidate, f"{candidate}.gz")):
        n += 1
        candidate = f"{base}-{n}"
    return live.with_name(candidate)


def _rotated_files(log_dir: Path) -> list[_Rotated]:
    found: list[_Rotated] = []
    for entry in os.scandir(log_dir):
        match = _ROTATED.fullmatch(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        try:
            rotated_at = datetime.strptime(match["stamp"], STAMP_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            continue  # digits in the right places, but not a date: not a name we wrote
        found.append(_Rotated(Path(entry.path), rotated_at, compressed=bool(match["gz"])))
    return sorted(found, key=lambda r: (r.rotated_at, r.path.name))


def _expire_or_compress(
    rotated: _Rotated,
    policy: LogRotation,
    moment: datetime,
    idle_grace: timedelta,
    report: RotationReport,
) -> None:
    status = _regular(rotated.path)
    if status is None:
        return
    if not rotated.compressed and not _idle(status, idle_grace):
        return
    age = moment - rotated.rotated_at
    try:
        if age >= policy.delete_after:
            rotated.path.unlink()
            report.deleted += 1
            report.bytes_freed += status.st_size
        elif not rotated.compressed and age >= policy.compress_after:
            saved = _compress(rotated.path, status)
            if saved is not None:
                report.compressed += 1
                report.bytes_freed += saved
    except FileNotFoundError:
        return
    except OSError:
        # One unreadable or unwritable file must not stop the rest; the next run retries.
        log.exception("log rotation could not process a file", file=rotated.path.name)


def _idle(status: os.stat_result, idle_grace: timedelta) -> bool:
    last_change = max(status.st_mtime, status.st_ctime)
    return time.time() - last_change >= idle_grace.total_seconds()


def _compress(path: Path, status: os.stat_result) -> int | None:
    """Gzip ``path`` to ``path.gz`` and remove it; the bytes saved, or None if it changed."""
    target = path.with_name(f"{path.name}.gz")
    partial = path.with_name(f".{target.name}.partial")
    with path.open("rb") as source:
        if not _same_file(os.fstat(source.fileno()), status):
            return None
        mode = stat.S_IMODE(status.st_mode) & LOG_FILE_MODE
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        with open(os.open(partial, flags, mode), "wb") as raw:
            with gzip.GzipFile(
                filename=path.name, mode="wb", fileobj=raw, mtime=int(status.st_mtime)
            ) as zipped:
                shutil.copyfileobj(source, zipped, _COPY_CHUNK)
            raw.flush()
            os.fsync(raw.fileno())
        copied = source.tell()
    # By name, not by the open descriptor: the name is what we are about to remove.
    now_there = _regular(path)
    if now_there is None or not _same_file(now_there, status) or copied != status.st_size:
        partial.unlink()
        log.warning("rotated log changed while being compressed; retrying later", file=path.name)
        return None
    os.replace(partial, target)
    _fsync_dir(path.parent)
    path.unlink()
    _fsync_dir(path.parent)
    return status.st_size - target.stat().st_size


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns) == (
        b.st_dev,
        b.st_ino,
        b.st_size,
        b.st_mtime_ns,
    )


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
