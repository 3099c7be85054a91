"""Backups on real PostgreSQL: made with pg_dump, kept, and verified by restoring them."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from incident.maintenance import pgtools
from incident.maintenance.backups import (
    BackupError,
    backup_status,
    create_backup,
    verify_latest,
)
from incident.maintenance.pgtools import BackupToolError, PgTarget, find_tool
from tests.maintenance.conftest import SOURCE_INCIDENTS, database_exists

pytestmark = pytest.mark.timeout(180)

T0 = datetime(2026, 11, 22, 2, 0, tzinfo=UTC)
MAX_AGE = timedelta(hours=26)


@pytest.fixture
def backup_dir(tmp_path: Path) -> Path:
    return tmp_path / "backups"


def verify(url: str, directory: Path, mode: str = "restore", **kwargs):
    lines: list[str] = []
    kwargs.setdefault("max_age", MAX_AGE)
    result = verify_latest(url, directory, mode=mode, progress=lines.append, **kwargs)
    return result, lines


def assert_scratch_dropped(server_url: str, result) -> None:
    if result.scratch_database is not None:
        assert not database_exists(server_url, result.scratch_database)


def test_a_good_backup_has_a_manifest_and_verifies_by_restore(
    source_url, postgres_server_url, backup_dir
):
    lines: list[str] = []
    made = create_backup(source_url, backup_dir, keep=3, progress=lines.append)

    assert made.path.name.startswith("incident-") and made.path.name.endswith(".dump")
    assert made.manifest_path == backup_dir / made.path.name.replace(".dump", ".manifest.json")
    data = made.path.read_bytes()
    assert data.startswith(b"PGDMP")  # the custom format
    manifest = json.loads(made.manifest_path.read_text())
    assert manifest["size"] == made.size == len(data)
    assert manifest["sha256"] == made.sha256 == hashlib.sha256(data).hexdigest()
    assert made.row_counts["incidents"] == made.row_counts["alerts"] == SOURCE_INCIDENTS
    assert made.row_counts["notifications"] == SOURCE_INCIDENTS // 2
    assert {"alert_groups", "timeline_entries", "escalation_timers"} <= made.row_counts.keys()
    assert "alembic_version" not in made.row_counts
    assert manifest["row_counts"] == made.row_counts
    # Whichever pg_dump ran (PATH's or the embedded server's), it was new enough.
    assert manifest["pg_dump_major"] >= manifest["server_version_num"] // 10000
    assert lines[0].startswith("dumping ") and " with pg_dump " in lines[0]
    assert any(line.startswith(f"wrote {made.path}") for line in lines)

    result, lines = verify(source_url, backup_dir)

    assert result.problems == []
    assert result.ok
    assert result.backup == made.path
    assert result.restore_seconds is not None and result.restore_seconds > 0
    assert result.row_counts == result.expected_row_counts == made.row_counts
    assert result.scratch_database and result.scratch_database.startswith("incident_verify_")
    assert_scratch_dropped(postgres_server_url, result)
    assert any(line.startswith("restoring into incident_verify_") for line in lines)
    assert f"row counts match ({len(made.row_counts)} tables)" in lines

    status = backup_status(backup_dir)
    assert status["backups"] == 1
    assert status["newest_backup_file"] == str(made.path)
    assert status["last_backup_ok"] is True and status["last_verify_ok"] is True
    assert status["last_restore_seconds"] == result.restore_seconds
    assert status["last_good_verify_time"] == pytest.approx(result.checked_at.timestamp())
    recorded = json.loads((backup_dir / "last-verify.json").read_text())
    assert recorded["ok"] is True and recorded["problems"] == []


def test_a_good_backup_verifies_by_list_without_a_scratch_database(source_url, backup_dir):
    create_backup(source_url, backup_dir, keep=1)

    result, lines = verify(source_url, backup_dir, mode="list")

    assert result.ok, result.problems
    assert result.restore_seconds is None and result.scratch_database is None
    assert any("--list reads it" in line for line in lines)


def test_keep_two_after_four_backups_leaves_the_newest_two(source_url, backup_dir):
    made = [
        create_backup(source_url, backup_dir, keep=2, now=T0 + timedelta(hours=n)) for n in range(4)
    ]

    names = sorted(p.name for p in backup_dir.iterdir() if p.name.startswith("incident-"))
    assert names == sorted(
        [
            made[2].path.name,
            made[2].manifest_path.name,
            made[3].path.name,
            made[3].manifest_path.name,
        ]
    )
    assert made[3].deleted == [made[1].path]
    assert backup_status(backup_dir)["backups"] == 2


def test_the_backup_just_written_is_kept_even_when_its_time_is_older(source_url, backup_dir):
    create_backup(source_url, backup_dir, keep=1, now=T0 + timedelta(hours=5))

    older = create_backup(source_url, backup_dir, keep=1, now=T0)

    assert older.path.exists() and older.manifest_path.exists()
    assert [p.name for p in backup_dir.glob("*.dump")] == [older.path.name]


def test_leftovers_of_interrupted_backups_go_once_surely_abandoned(source_url, backup_dir):
    backup_dir.mkdir()
    abandoned = backup_dir / "incident-20261101T020000Z.dump"
    abandoned_partial = backup_dir / ".incident-20261101T030000Z.dump.partial"
    in_progress = backup_dir / ".incident-20261122T020000Z.dump.partial"
    for path in (abandoned, abandoned_partial, in_progress):
        path.write_bytes(b"PGDMP")
    two_days_ago = time.time() - 2 * 86400
    for path in (abandoned, abandoned_partial):
        os.utime(path, (two_days_ago, two_days_ago))

    made = create_backup(source_url, backup_dir, keep=3)

    assert not abandoned.exists() and not abandoned_partial.exists()
    assert in_progress.exists()  # another run may be writing it right now
    assert made.path.exists()


def test_two_backups_in_the_same_second_get_two_names(source_url, backup_dir):
    first = create_backup(source_url, backup_dir, keep=5, now=T0)
    second = create_backup(source_url, backup_dir, keep=5, now=T0)

    assert first.path != second.path
    assert first.path.exists() and second.path.exists()


def test_a_truncated_backup_fails_its_checksum_and_its_restore(
    source_url, postgres_server_url, backup_dir
):
    made = create_backup(source_url, backup_dir, keep=1)
    with made.path.open("r+b") as f:
        f.truncate(made.size // 2)

    result, _ = verify(source_url, backup_dir)

    assert not result.ok
    text = "\n".join(result.problems)
    assert f"{made.path} is {made.size // 2} bytes but its manifest says {made.size}" in text
    assert "truncated" in text and "SHA-256" in text
    assert any(p.startswith("pg_restore") and str(made.path) in p for p in result.problems)
    assert result.restore_seconds is None
    assert_scratch_dropped(postgres_server_url, result)
    assert backup_status(backup_dir)["last_verify_ok"] is False


def test_a_bit_flip_fails_verification(source_url, postgres_server_url, backup_dir):
    made = create_backup(source_url, backup_dir, keep=1)
    data = bytearray(made.path.read_bytes())
    data[len(data) // 2] ^= 0x01
    made.path.write_bytes(bytes(data))

    result, _ = verify(source_url, backup_dir)

    assert not result.ok
    assert any("does not match the SHA-256" in p and str(made.path) in p for p in result.problems)
    assert_scratch_dropped(postgres_server_url, result)


def test_no_backup_at_all_fails_verification(source_url, backup_dir):
    result, _ = verify(source_url, backup_dir)

    assert not result.ok and result.backup is None
    assert result.problems == [f"no backup: the backup directory {backup_dir} does not exist"]

    # The failure is recorded there for /metrics, so the directory exists now.
    assert backup_status(backup_dir)["last_verify_ok"] is False
    result, _ = verify(source_url, backup_dir)
    assert result.problems == [f"no backup in {backup_dir}"]


def test_a_dump_whose_file_is_gone_fails_verification(source_url, backup_dir):
    made = create_backup(source_url, backup_dir, keep=1)
    made.path.unlink()

    result, _ = verify(source_url, backup_dir)

    assert not result.ok
    assert result.problems == [
        f"{made.path} is missing although its manifest {made.manifest_path.name} is there"
    ]


def test_a_dump_without_its_manifest_is_an_interrupted_backup(source_url, backup_dir):
    made = create_backup(source_url, backup_dir, keep=1)
    made.manifest_path.unlink()

    result, _ = verify(source_url, backup_dir)

    assert not result.ok
    assert len(result.problems) == 1
    assert result.problems[0].startswith(f"no complete backup in {backup_dir}: {made.path.name}")
    assert "no manifest" in result.problems[0]


def test_a_backup_older_than_max_age_fails_verification(source_url, backup_dir):
    made = create_backup(source_url, backup_dir, keep=1, now=T0)

    result, _ = verify(source_url, backup_dir, max_age=MAX_AGE, now=T0 + timedelta(hours=27))

    assert not result.ok
    assert result.backup_age == timedelta(hours=27)
    assert result.problems == [
        f"{made.path} is the newest backup and is 1 d 3 h old, older than max_age 1d2h"
    ]
    # Everything else about it was still checked, and was fine.
    assert result.restore_seconds is not None

    fresh, _ = verify(source_url, backup_dir, max_age=MAX_AGE, now=T0 + timedelta(hours=25))
    assert fresh.ok, fresh.problems


def test_row_counts_that_differ_from_the_manifest_fail_verification(
    source_url, postgres_server_url, backup_dir
):
    made = create_backup(source_url, backup_dir, keep=1)
    manifest = json.loads(made.manifest_path.read_text())
    manifest["row_counts"]["incidents"] += 1
    made.manifest_path.write_text(json.dumps(manifest))

    result, _ = verify(source_url, backup_dir)

    assert result.problems == [
        f"{made.path} restores {SOURCE_INCIDENTS} rows into incidents "
        f"but its manifest says {SOURCE_INCIDENTS + 1}"
    ]
    assert_scratch_dropped(postgres_server_url, result)


def test_rows_written_during_the_dump_do_not_upset_the_comparison(source_url, backup_dir):
    target = PgTarget.from_url(source_url)
    stop = threading.Event()
    written = threading.Semaphore(0)

    def keep_writing() -> None:
        with psycopg.connect(target.conninfo, password=target.password, autocommit=True) as conn:
            while not stop.is_set():
                conn.execute(
                    "INSERT INTO timeline_entries (incident_id, at, kind, detail) "
                    "SELECT min(id), now(), 'escalated', '{}' FROM incidents"
                )
                written.release()

    writer = threading.Thread(target=keep_writing, daemon=True)
    writer.start()
    try:
        assert written.acquire(timeout=10)
        made = create_backup(source_url, backup_dir, keep=1)
    finally:
        stop.set()
        writer.join(10)
    with psycopg.connect(target.conninfo, password=target.password) as conn:
        now_counted = conn.execute("SELECT count(*) FROM timeline_entries").fetchone()[0]
    assert now_counted > made.row_counts["timeline_entries"]  # the writer did overlap

    result, _ = verify(source_url, backup_dir)

    assert result.ok, result.problems


def test_a_role_without_createdb_is_told_so(source_url, postgres_server_url, backup_dir):
    create_backup(source_url, backup_dir, keep=1)
    role = f"incident_nocreatedb_{uuid.uuid4().hex[:6]}"
    server = PgTarget.from_url(postgres_server_url)
    with psycopg.connect(server.conninfo, password=server.password, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN NOCREATEDB')
    try:
        params = psycopg.conninfo.conninfo_to_dict(PgTarget.from_url(source_url).conninfo)
        params["user"] = role
        url = "postgresql://?" + "&".join(f"{k}={v}" for k, v in params.items())

        result, _ = verify(url, backup_dir)

        assert not result.ok
        assert len(result.problems) == 1
        assert f"role {role} may not create the scratch database" in result.problems[0]
        assert f"ALTER ROLE {role} CREATEDB" in result.problems[0]
        assert verify(url, backup_dir, mode="list")[0].ok
    finally:
        with psycopg.connect(server.conninfo, password=server.password, autocommit=True) as conn:
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def _fake_pg_dump(directory: Path, version: str) -> Path:
    directory.mkdir(exist_ok=True)
    tool = directory / "pg_dump"
    tool.write_text(f"#!/bin/sh\necho 'pg_dump (PostgreSQL) {version}'\n")
    tool.chmod(0o755)
    return tool


def test_a_pg_dump_older_than_the_server_is_a_clear_error(tmp_path):
    old = _fake_pg_dump(tmp_path / "old", "9.6.24")

    with pytest.raises(BackupToolError) as caught:
        find_tool("pg_dump", 18, "the server (PostgreSQL 18.1)", candidates=[old])

    message = str(caught.value)
    assert "the server (PostgreSQL 18.1) needs pg_dump 18 or newer" in message
    assert f"pg_dump 9.6 at {old}" in message
    assert find_tool("pg_dump", 9, "x", candidates=[old]).version == "9.6"


def test_create_backup_fails_cleanly_without_a_suitable_pg_dump(
    source_url, backup_dir, tmp_path, monkeypatch
):
    old = _fake_pg_dump(tmp_path / "old", "9.6.24")
    monkeypatch.setattr(pgtools, "tool_candidates", lambda name: [old])

    with pytest.raises(
        BackupError, match=r"needs pg_dump \d+ or newer, but only found pg_dump 9\.6"
    ):
        create_backup(source_url, backup_dir, keep=1)

    assert [p.name for p in backup_dir.iterdir()] == ["last-backup.json"]
    status = backup_status(backup_dir)
    assert status["last_backup_ok"] is False and "pg_dump 9.6" in status["last_backup_problems"][0]
    assert status["last_good_backup_time"] is None


def test_the_password_goes_to_the_environment_not_the_command_line():
    target = PgTarget.from_url("postgresql+psycopg://ops:s3cr%40t@db.internal:6432/incident")

    assert "s3cr" not in target.conninfo and "s3cr" not in target.label
    assert target.env()["PGPASSWORD"] == "s3cr@t"
    assert target.label == "ops@db.internal:6432/incident"
    assert "dbname=other" in target.with_database("other").conninfo
