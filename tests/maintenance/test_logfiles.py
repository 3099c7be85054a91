"""Log rotation: renames live logs, gzips and deletes old rotations, and loses no line."""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import stat
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from incident.maintenance.logfiles import LOCK_NAME, rotate_logs
from incident.rules.maintenance import LogRotation

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# As small as a Duration may be: every rotation is old enough to compress.
COMPRESS_AT_ONCE = LogRotation(
    compress_after=timedelta(microseconds=1), delete_after=timedelta(days=30)
)
DAILY = LogRotation(compress_after=timedelta(days=1), delete_after=timedelta(days=30))
NOW = datetime(2025, 3, 10, 12, 0, 0, tzinfo=UTC)

LINES_PER_WRITER = 2_500

# One writer per OS process. `--fork` makes the process configure logging and
# then fork, as a prefork worker does: the pool child inherits the open handler
# and appends to the same worker.log as its parent.
WRITER = """
import logging, os, sys, time
from pathlib import Path
from incident.config import get_settings
from incident.logging import configure_logging, get_logger

process, count, run_dir = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
configure_logging(get_settings(), process=process)
name, child = process, None
if "--fork" in sys.argv:
    child = os.fork()
    name = f"{process}-main" if child else f"{process}-child"
(run_dir / f"ready-{name}").touch()
while not (run_dir / "go").exists():
    time.sleep(0.001)
log = get_logger("incident.test.writer")
for n in range(count):
    log.info("numbered line", writer=name, n=n)
logging.shutdown()
if child == 0:
    os._exit(0)
if child:
    sys.exit(os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]))
"""
WRITERS = ("worker-main", "worker-child", "api", "beat")


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y%m%dT%H%M%SZ")


def write(path: Path, text: str, *, mtime: datetime | None = None) -> Path:
    path.write_text(text, encoding="utf-8")
    if mtime is not None:
        os.utime(path, (mtime.timestamp(), mtime.timestamp()))
    return path


def names(log_dir: Path) -> set[str]:
    return {p.name for p in log_dir.iterdir() if p.name != LOCK_NAME}


def read_lines(path: Path) -> list[str]:
    data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    return data.decode("utf-8").splitlines()


def start_writer(process: str, run_dir: Path, log_dir: Path, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INCIDENT_")}
    env.update(
        PYTHONPATH=str(PROJECT_ROOT),
        INCIDENT_LOG_DIR=str(log_dir),
        INCIDENT_LOG_FORMAT="json",
        INCIDENT_LOG_LEVEL="INFO",
    )
    with (run_dir / f"{process}.stderr").open("wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-c", WRITER, process, str(LINES_PER_WRITER), str(run_dir), *extra],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=run_dir,
        )


def wait_until(predicate, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def write_while_rotating(tmp_path: Path, rotate) -> tuple[Path, list, Counter, dict]:
    """Four writers (a forked pair among them) log numbered lines while ``rotate`` runs
    in a loop; the log dir, what each run reported, how often each line was found, and
    the files each writer's lines were found in."""
    log_dir, run_dir = tmp_path / "logs", tmp_path / "run"
    run_dir.mkdir()
    writers = [
        start_writer("worker", run_dir, log_dir, "--fork"),
        start_writer("api", run_dir, log_dir),
        start_writer("beat", run_dir, log_dir),
    ]
    while_writing = []
    try:
        wait_until(
            lambda: all((run_dir / f"ready-{w}").exists() for w in WRITERS),
            timeout=30,
            what="the writers to start",
        )
        (run_dir / "go").touch()
        while any(w.poll() is None for w in writers):
            while_writing.append(rotate(log_dir))
            time.sleep(0.005)
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
            writer.wait()
    for writer, process in zip(writers, ("worker", "api", "beat"), strict=True):
        assert writer.returncode == 0, (run_dir / f"{process}.stderr").read_text()[-3000:]

    seen: Counter[tuple[str, int]] = Counter()
    files_per_writer: dict[str, set[str]] = {w: set() for w in WRITERS}
    for path in sorted(log_dir.iterdir()):
        if path.name == LOCK_NAME:
            continue
        assert not path.name.startswith("."), f"left behind {path.name}"
        for line in read_lines(path):
            record = json.loads(line)
            assert record["event"] == "numbered line"
            seen[record["writer"], record["n"]] += 1
            files_per_writer[record["writer"]].add(path.name)
    return log_dir, while_writing, seen, files_per_writer


def assert_every_line_once(seen: Counter) -> None:
    expected = {(w, n) for w in WRITERS for n in range(LINES_PER_WRITER)}
    assert set(seen) == expected
    assert [pair for pair, times in seen.items() if times != 1] == []
    assert sum(seen.values()) == 10_000


@pytest.mark.timeout(60)
def test_rotation_while_four_processes_write_loses_no_line(tmp_path):
    # Long next to one line's stat-to-write window, short enough for files
    # rotated early in the run to be compressed while the writers still write.
    grace = timedelta(seconds=0.25)
    log_dir, while_writing, seen, files_per_writer = write_while_rotating(
        tmp_path, lambda log_dir: rotate_logs(log_dir, COMPRESS_AT_ONCE, idle_grace=grace)
    )

    assert_every_line_once(seen)
    assert sum(r.rotated for r in while_writing) >= 6
    assert sum(r.compressed for r in while_writing) >= 1
    # Every writer, the forked pair included, saw its file rotated under it.
    assert all(len(files) >= 2 for files in files_per_writer.values()), files_per_writer
    live = {"worker.log", "api.log", "beat.log"}
    assert any(name.endswith(".gz") for name in names(log_dir) - live)


@pytest.mark.timeout(60)
def test_the_size_check_rotates_only_files_past_max_size_and_loses_no_line(tmp_path):
    small = LogRotation(max_size="64KiB", compress_after=timedelta(days=1))
    log_dir, while_writing, seen, _ = write_while_rotating(
        tmp_path, lambda log_dir: rotate_logs(log_dir, small, oversized_only=True)
    )

    assert_every_line_once(seen)
    rotated = sorted(p for p in log_dir.iterdir() if ".log." in p.name)
    assert sum(r.rotated for r in while_writing) == len(rotated) >= 10
    # Nothing was rotated before it reached max_size: a live file under it stays.
    assert all(p.stat().st_size >= 64 * 1024 for p in rotated), [
        (p.name, p.stat().st_size) for p in rotated
    ]


def test_the_size_check_leaves_smaller_files_to_the_periodic_rotation(tmp_path):
    policy = LogRotation(max_size="1KiB")
    write(tmp_path / "api.log", "x" * 1023 + "\n")
    write(tmp_path / "worker.log", "x" * 1022 + "\n")

    report = rotate_logs(tmp_path, policy, now=NOW, oversized_only=True)

    assert names(tmp_path) == {f"api.log.{stamp(NOW)}", "worker.log"}
    assert report.rotated == 1
    assert rotate_logs(tmp_path, policy, now=NOW).rotated == 1
    assert "worker.log" not in names(tmp_path)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_rotated_and_compressed_logs_are_readable_by_owner_and_group_only(tmp_path, umask_022):
    # As an older version left them: the umask's 0644.
    live = write(tmp_path / "worker.log", "live\n")
    old = write(tmp_path / f"api.log.{stamp(NOW - timedelta(days=2))}", "old\n" * 100,
                mtime=NOW - timedelta(days=2))
    assert stat.S_IMODE(live.stat().st_mode) == stat.S_IMODE(old.stat().st_mode) == 0o644

    rotate_logs(tmp_path, DAILY, now=NOW, idle_grace=timedelta(0))

    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in tmp_path.iterdir()
             if p.name != LOCK_NAME}
    assert modes == {f"worker.log.{stamp(NOW)}": "0o640", f"{old.name}.gz": "0o640"}


def test_rotation_renames_live_logs_with_a_utc_stamp_and_skips_empty_ones(tmp_path):
    write(tmp_path / "worker.log", '{"event": "a"}\n')
    write(tmp_path / "api.log", "")

    report = rotate_logs(tmp_path, DAILY, now=NOW)

    rotated = f"worker.log.{stamp(NOW)}"
    assert names(tmp_path) == {rotated, "api.log"}
    assert (tmp_path / rotated).read_text() == '{"event": "a"}\n'
    assert (report.rotated, report.compressed, report.deleted) == (1, 0, 0)


def test_two_rotations_within_one_second_keep_both_files(tmp_path):
    write(tmp_path / "beat.log", "first\n")
    rotate_logs(tmp_path, DAILY, now=NOW)
    write(tmp_path / "beat.log", "second\n")
    rotate_logs(tmp_path, DAILY, now=NOW + timedelta(milliseconds=500))

    base = f"beat.log.{stamp(NOW)}"
    assert (tmp_path / base).read_text() == "first\n"
    assert (tmp_path / f"{base}-1").read_text() == "second\n"


def test_idle_rotations_older_than_compress_after_are_gzipped(tmp_path):
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    old = write(tmp_path / f"api.log.{stamp(NOW - timedelta(days=2))}", "old\n" * 1000)
    recent = write(tmp_path / f"api.log.{stamp(NOW - timedelta(hours=2))}", "recent\n")
    for path in (old, recent):
        os.utime(path, (long_ago.timestamp(), long_ago.timestamp()))

    report = rotate_logs(tmp_path, DAILY, now=NOW, idle_grace=timedelta(0))

    assert names(tmp_path) == {f"{old.name}.gz", recent.name}
    assert gzip.decompress((tmp_path / f"{old.name}.gz").read_bytes()) == b"old\n" * 1000
    assert report.compressed == 1
    assert report.bytes_freed == 4000 - (tmp_path / f"{old.name}.gz").stat().st_size


def test_a_rotated_file_written_to_within_the_idle_grace_is_not_compressed(tmp_path):
    # Old by its name, but a writer that stat'ed before the rename may still append to it.
    busy = write(tmp_path / f"worker.log.{stamp(NOW - timedelta(days=2))}", "late line\n")
    write(tmp_path / "api.log", "live\n")

    report = rotate_logs(tmp_path, COMPRESS_AT_ONCE, now=NOW)

    rotated_now = f"api.log.{stamp(NOW)}"
    # Neither the freshly written file nor the one this run renamed is compressed.
    assert names(tmp_path) == {busy.name, rotated_now}
    assert report.compressed == 0


def test_rotations_older_than_delete_after_are_deleted_whatever_their_form(tmp_path):
    expired_plain = write(tmp_path / f"worker.log.{stamp(NOW - timedelta(days=31))}", "x\n")
    expired_gz = tmp_path / f"beat.log.{stamp(NOW - timedelta(days=40))}.gz"
    expired_gz.write_bytes(gzip.compress(b"y\n"))
    kept = tmp_path / f"beat.log.{stamp(NOW - timedelta(days=29))}.gz"
    kept.write_bytes(gzip.compress(b"z\n"))
    expired_bytes = expired_plain.stat().st_size + expired_gz.stat().st_size

    report = rotate_logs(tmp_path, DAILY, now=NOW, idle_grace=timedelta(0))

    assert names(tmp_path) == {kept.name}
    assert report.deleted == 2
    assert report.bytes_freed == expired_bytes


def test_files_that_are_not_ours_are_left_alone(tmp_path):
    ancient = NOW - timedelta(days=400)
    outside = write(tmp_path.parent / f"{tmp_path.name}-target.log", "not ours\n")
    unrelated = {
        "notes.txt": "n\n",
        "worker.log.1": "logrotate's\n",
        "worker.log.old": "o\n",
        f"worker.log.{stamp(ancient)}.bak": "b\n",
        f"worker.log.{stamp(ancient)}.gz.tmp": "t\n",
        "worker.log.20241399T000000Z": "not a date\n",
        f"worker.log.{stamp(ancient)}-0": "bad sequence\n",
        ".worker.log": "hidden\n",
        "worker.LOG": "upper case\n",
        "api.log.gz": "g\n",
        f".api.log.{stamp(ancient)}.partial": "not a partial of ours\n",
    }
    for name, text in unrelated.items():
        write(tmp_path / name, text, mtime=ancient)
    (tmp_path / "beat.log").mkdir()
    (tmp_path / "api.log").symlink_to(outside)
    (tmp_path / f"worker.log.{stamp(ancient)}").symlink_to(outside)
    ours = write(tmp_path / f"worker.log.{stamp(ancient)}-2", "ours\n", mtime=ancient)

    report = rotate_logs(tmp_path, DAILY, now=NOW, idle_grace=timedelta(0))

    assert not ours.exists()
    assert (report.rotated, report.compressed, report.deleted) == (0, 0, 1)
    for name, text in unrelated.items():
        assert (tmp_path / name).read_text() == text, name
    assert (tmp_path / "beat.log").is_dir()
    assert (tmp_path / "api.log").is_symlink()
    assert (tmp_path / f"worker.log.{stamp(ancient)}").is_symlink()
    assert outside.read_text() == "not ours\n"


def test_a_leftover_partial_compression_is_removed_and_redone(tmp_path):
    rotated = write(
        tmp_path / f"worker.log.{stamp(NOW - timedelta(days=2))}",
        "whole\n",
        mtime=NOW - timedelta(days=2),
    )
    partial = write(tmp_path / f".{rotated.name}.gz.partial", "half a gzip stre")

    rotate_logs(tmp_path, DAILY, now=NOW, idle_grace=timedelta(0))

    assert not partial.exists()
    assert gzip.decompress((tmp_path / f"{rotated.name}.gz").read_bytes()) == b"whole\n"


def test_a_run_that_finds_another_holding_the_lock_does_nothing(tmp_path):
    write(tmp_path / "worker.log", "line\n")
    with (tmp_path / LOCK_NAME).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        report = rotate_logs(tmp_path, DAILY, now=NOW)

    assert report.busy
    assert report.rotated == 0
    assert names(tmp_path) == {"worker.log"}


def test_a_missing_log_directory_is_not_an_error(tmp_path):
    report = rotate_logs(tmp_path / "absent", DAILY, now=NOW)

    assert report.as_dict() == {
        "rotated": 0,
        "compressed": 0,
        "deleted": 0,
        "bytes_freed": 0,
        "busy": False,
    }
    assert not (tmp_path / "absent").exists()
