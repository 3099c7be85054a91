"""`incident backup create` and `incident backup verify`: progress on stderr, the outcome
on stdout, and an exit status a cron job or a runbook can act on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from incident.db import engine_for, session_scope
from incident.incidents.models import Incident

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def backup_dir(tmp_path: Path) -> Path:
    return tmp_path / "backups"


def run_cli(*args: str, url: str | None, backup_dir: Path, rules: Path | None = None,
            **env_vars: str):
    env = {k: v for k, v in os.environ.items() if not k.startswith("INCIDENT_")}
    env["INCIDENT_BACKUP_DIR"] = str(backup_dir)
    if url:
        env["INCIDENT_DATABASE_URL"] = url
    if rules:
        env["INCIDENT_RULES_FILE"] = str(rules)
    env.update(env_vars)
    return subprocess.run(
        [sys.executable, "-m", "incident", "backup", *args],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_incident_backup_create_and_verify_exit_zero_when_all_is_well(
    source_url, backup_dir, tmp_path
):
    rules = tmp_path / "rules.yaml"
    rules.write_text("maintenance:\n  backup: {keep: 1, max_age: 1h, verify: list}\n")

    for _ in range(2):
        created = run_cli("create", url=source_url, backup_dir=backup_dir, rules=rules)
        assert created.returncode == 0, created.stderr
    assert created.stdout.startswith(f"backup written: {backup_dir}/incident-")
    assert "incident backup: dumping " in created.stderr
    assert len(list(backup_dir.glob("*.dump"))) == 1  # keep: 1 from the rules file

    listed = run_cli("verify", url=source_url, backup_dir=backup_dir, rules=rules)
    assert listed.returncode == 0, listed.stderr
    assert "checksum and pg_restore --list" in listed.stdout and "max_age 1h" in listed.stdout

    restored = run_cli("verify", "--mode", "restore", url=source_url, backup_dir=backup_dir)
    assert restored.returncode == 0, restored.stderr
    assert "restored in" in restored.stdout
    assert "incident backup: row counts match" in restored.stderr


def test_incident_backup_verify_exits_one_listing_each_problem(source_url, backup_dir):
    created = run_cli("create", "--keep", "2", url=source_url, backup_dir=backup_dir)
    assert created.returncode == 0, created.stderr
    dump = next(backup_dir.glob("*.dump"))
    with dump.open("r+b") as f:
        f.truncate(100)

    failed = run_cli("verify", "--max-age", "26h", url=source_url, backup_dir=backup_dir)

    assert failed.returncode == 1
    assert "incident backup: verification FAILED" in failed.stderr
    problems = [line for line in failed.stderr.splitlines() if line.startswith("  - ")]
    assert len(problems) >= 2 and all(str(dump) in line for line in problems)
    assert failed.stdout == ""


def test_incident_backup_says_what_is_missing(backup_dir):
    no_url = run_cli("create", url=None, backup_dir=backup_dir)
    assert no_url.returncode == 2 and "INCIDENT_DATABASE_URL is not set" in no_url.stderr

    bad_age = run_cli(
        "verify", "--max-age", "soon", url="postgresql://x@127.0.0.1/x", backup_dir=backup_dir
    )
    assert bad_age.returncode == 2 and "--max-age: invalid duration 'soon'" in bad_age.stderr


def test_incident_backup_create_exits_one_when_the_database_is_unreachable(tmp_path, backup_dir):
    from incident.embedded import free_port

    url = f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/nothing"
    failed = run_cli("create", url=url, backup_dir=backup_dir)

    assert failed.returncode == 1
    assert "incident backup: backup FAILED: cannot connect to nobody@127.0.0.1:" in failed.stderr


def open_backup_incidents(url: str) -> list[str]:
    """The severity of each open IncidentBackupFailing incident in the database at ``url``.

    The module's tests share one database, so a later test's failure may reopen an
    earlier test's incident (the reopen window) rather than open a new one.
    """
    with session_scope(engine_for(url)) as session:
        return list(session.scalars(
            select(Incident.severity)
            .where(Incident.title == "IncidentBackupFailing", Incident.status != "resolved")
        ))


@pytest.fixture
def shared_state(source_url, redis_url, redis_client) -> dict[str, str]:
    """What beat's jobs see: the same database and Redis, so the same incident."""
    redis_client.flushdb()
    return {"INCIDENT_BROKER_URL": redis_url, "INCIDENT_REDIS_URL": redis_url}


def test_a_corrupt_backup_found_by_hand_opens_one_internal_incident_a_good_run_resolves(
    source_url, backup_dir, tmp_path, shared_state
):
    rules = tmp_path / "rules.yaml"
    rules.write_text("maintenance:\n  backup: {keep: 2, max_age: 1h, verify: list}\n")

    def cli(*args: str):
        return run_cli(*args, url=source_url, backup_dir=backup_dir, rules=rules, **shared_state)

    assert open_backup_incidents(source_url) == []

    created = cli("create")
    assert created.returncode == 0, created.stderr
    assert "backup verified: " in created.stdout
    assert open_backup_incidents(source_url) == []

    dump = next(backup_dir.glob("*.dump"))
    with dump.open("r+b") as f:
        f.truncate(100)
    for _ in range(2):
        failed = cli("verify")
        assert failed.returncode == 1
        assert "could not update" not in failed.stderr, failed.stderr
    assert open_backup_incidents(source_url) == ["SEV2"]

    good = cli("create")
    assert good.returncode == 0, good.stderr
    assert open_backup_incidents(source_url) == []


def test_a_failed_backup_run_by_hand_opens_the_incident_and_the_next_good_one_resolves_it(
    source_url, backup_dir, tmp_path, shared_state
):
    broken = tmp_path / "bin"
    broken.mkdir()
    pg_dump = broken / "pg_dump"
    pg_dump.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then echo "pg_dump (PostgreSQL) 99.0"; exit 0; fi\n'
        "echo 'pg_dump: error: could not write: No space left on device' >&2; exit 1\n"
    )
    pg_dump.chmod(0o755)
    path = f"{broken}:{os.environ['PATH']}"
    assert open_backup_incidents(source_url) == []

    failed = run_cli("create", url=source_url, backup_dir=backup_dir, PATH=path, **shared_state)
    assert failed.returncode == 1
    assert "backup FAILED" in failed.stderr and "No space left" in failed.stderr
    assert "could not update" not in failed.stderr, failed.stderr
    assert open_backup_incidents(source_url) == ["SEV2"]

    good = run_cli("create", url=source_url, backup_dir=backup_dir, **shared_state)
    assert good.returncode == 0, good.stderr
    assert open_backup_incidents(source_url) == []


def test_a_run_on_another_directory_leaves_the_incident_alone(
    source_url, backup_dir, tmp_path, shared_state
):
    elsewhere = tmp_path / "elsewhere"
    assert open_backup_incidents(source_url) == []

    def cli(*args: str):
        return run_cli(*args, "--backup-dir", str(elsewhere), url=source_url,
                       backup_dir=backup_dir, **shared_state)

    assert cli("create").returncode == 0
    with next(elsewhere.glob("*.dump")).open("r+b") as f:
        f.truncate(100)
    assert cli("verify").returncode == 1
    assert open_backup_incidents(source_url) == []
