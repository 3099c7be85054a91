"""The beat jobs as a worker runs them: locks, the Watchdog, and backup verification incidents.

The task functions run in this process against real PostgreSQL and Redis
(and real pg_dump/pg_restore); what they enqueue lands on the test broker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from incident import keys
from incident.config import get_settings
from incident.db import session_scope
from incident.incidents.models import Incident
from incident.maintenance import watchdog
from incident.maintenance.backups import create_backup
from incident.maintenance.locks import PREFIX, run_once
from incident.worker.app import beat_schedule
from tests import factories

RULES = """
maintenance:
  backup: {keep: 2, max_age: 1h, verify: restore}
  watchdog: {alertname: Watchdog, max_silence: 2s, severity: SEV1}
"""


@pytest.fixture
def jobs(clean_state, incident_environment, monkeypatch, tmp_path) -> Iterator[Path]:
    """This process configured as a worker with the rules above; yields the backup dir."""
    from incident.worker.tasks import reset_context

    rules = tmp_path / "rules.yml"
    rules.write_text(RULES)
    backups = tmp_path / "backups"
    backups.mkdir()
    monkeypatch.setenv("INCIDENT_RULES_FILE", str(rules))
    monkeypatch.setenv("INCIDENT_BACKUP_DIR", str(backups))
    get_settings.cache_clear()
    reset_context()
    yield backups
    monkeypatch.undo()
    get_settings.cache_clear()
    reset_context()


def description(incident_id: int) -> str:
    with session_scope() as session:
        return session.get(Incident, incident_id).alerts[0].annotations["description"]


def open_incidents() -> list[Incident]:
    with session_scope() as session:
        return list(session.scalars(select(Incident).where(Incident.status != "resolved")))


def all_incidents() -> list[Incident]:
    with session_scope() as session:
        return list(session.scalars(select(Incident).order_by(Incident.id)))


def test_run_once_lets_one_of_two_concurrent_runs_do_the_work(redis_client):
    redis_client.delete(PREFIX + "demo")
    ran: list[int] = []
    start = threading.Barrier(2)

    def beat(n: int) -> None:
        start.wait()
        run_once(redis_client, "demo", lambda: (ran.append(n), time.sleep(0.3)), timeout=10)

    threads = [threading.Thread(target=beat, args=(n,)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert len(ran) == 1
    # Released when done (no min_gap): the next tick runs.
    assert run_once(redis_client, "demo", lambda: "again", timeout=10) == "again"


def test_a_finished_run_holds_off_the_second_beats_copy_of_the_same_tick(redis_client):
    redis_client.delete(PREFIX + "gap")
    assert run_once(redis_client, "gap", lambda: 1, timeout=10, min_gap=1) == 1
    assert run_once(redis_client, "gap", lambda: 2, timeout=10, min_gap=1) is None
    time.sleep(1.1)
    assert run_once(redis_client, "gap", lambda: 3, timeout=10, min_gap=1) == 3


def test_two_copies_of_a_maintenance_task_at_once_purge_once(jobs, monkeypatch):
    from incident.maintenance.retention import PurgeReport
    from incident.worker.tasks import maintenance as tasks

    calls: list[int] = []

    def slow_purge(*args, **kwargs) -> PurgeReport:
        calls.append(1)
        time.sleep(0.3)
        return PurgeReport(incidents=7)

    monkeypatch.setattr(tasks, "purge_resolved", slow_purge)
    results: list = []
    start = threading.Barrier(2)

    def beat() -> None:
        start.wait()
        results.append(tasks.purge_resolved_incidents.run())

    threads = [threading.Thread(target=beat) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert len(calls) == 1
    assert sorted(results, key=str) == [7, None]


def test_the_beat_schedule_comes_from_the_rules_file(jobs):
    schedule = beat_schedule(get_settings())
    assert schedule["watchdog"]["schedule"] == 1
    assert schedule["verify-backup"]["schedule"] == 900
    assert str(schedule["backup"]["schedule"]) == "<crontab: 0 2 * * * (m/h/dM/MY/d)>"
    assert "rotate-logs" not in schedule, "no log directory, nothing to rotate"


def test_with_a_log_directory_beat_rotates_every_period_and_checks_sizes_often(
    jobs, monkeypatch, tmp_path
):
    monkeypatch.setenv("INCIDENT_LOG_DIR", str(tmp_path / "logs"))
    get_settings.cache_clear()
    schedule = beat_schedule(get_settings())
    assert schedule["rotate-logs"] == {"task": "incident.maintenance.rotate_logs",
                                       "schedule": 3600.0}
    assert schedule["rotate-oversized-logs"] == {"task": "incident.maintenance.rotate_logs",
                                                 "schedule": 30.0,
                                                 "kwargs": {"oversized_only": True}}


def test_the_size_check_task_rotates_only_what_is_past_max_size(jobs, monkeypatch, tmp_path):
    from incident.worker.tasks import maintenance as tasks
    from incident.worker.tasks import reset_context

    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "api.log").write_text("x" * 2048)
    (logs / "beat.log").write_text("x" * 10)
    rules = tmp_path / "rules.yml"
    rules.write_text(RULES + "  log_rotation: {every: 1h, max_size: 1KiB}\n")
    monkeypatch.setenv("INCIDENT_LOG_DIR", str(logs))
    get_settings.cache_clear()
    reset_context()

    assert tasks.rotate_logs.run(oversized_only=True) == 1
    assert sorted(p.name.split(".")[0] for p in logs.iterdir() if ".log." in p.name) == ["api"]
    assert tasks.rotate_logs.run() == 1  # the periodic run takes the small one too


def test_watchdog_alerts_open_nothing_and_silence_opens_one_sev1_that_their_return_resolves(
    jobs, redis_client
):
    from incident.worker.tasks.incidents import ingest_webhook
    from incident.worker.tasks.maintenance import check_watchdog

    def apply_notification(payload: dict) -> int | None:
        """One notification through the worker's ingestion, in this process."""
        return ingest_webhook(payload=payload)

    heartbeat = factories.payload(factories.alert(alertname="Watchdog", severity="none"))
    assert apply_notification(heartbeat) is None
    assert all_incidents() == []
    assert watchdog.last_seen(redis_client) is not None
    assert check_watchdog() == "quiet"

    # Three seconds without a Watchdog: past max_silence (2s).
    past = (datetime.now(UTC) - timedelta(seconds=3)).timestamp()
    redis_client.set(keys.WATCHDOG_LAST_SEEN, past)
    redis_client.set(keys.WATCHDOG_ARMED_AT, past)
    assert check_watchdog() == "silent"
    assert check_watchdog() == "silent"
    (silent,) = open_incidents()
    assert (silent.title, silent.severity) == ("AlertingPipelineSilent", "SEV1")
    assert silent.summary == "No Watchdog alert for over 2s"

    apply_notification(heartbeat)
    assert check_watchdog() == "heard"
    assert open_incidents() == []
    assert [i.status for i in all_incidents()] == ["resolved"]
    assert check_watchdog() == "quiet"


def test_silence_counts_from_start_up_when_no_watchdog_ever_arrived(jobs, redis_client):
    from incident.worker.tasks.maintenance import check_watchdog

    assert check_watchdog() == "quiet"  # arms the switch
    redis_client.set(keys.WATCHDOG_ARMED_AT, (datetime.now(UTC) - timedelta(seconds=3)).timestamp())
    assert check_watchdog() == "silent"
    (silent,) = open_incidents()
    assert "heard never, since start-up" in description(silent.id)


def verify_now(redis_client):
    from incident.worker.tasks.maintenance import verify_backup

    redis_client.delete(PREFIX + "backup")
    return verify_backup()


def test_a_new_installation_gets_max_age_of_grace_before_no_backup_counts(
    jobs, redis_client
):

    assert verify_now(redis_client) is False
    assert all_incidents() == []
    redis_client.set(keys.BACKUP_ARMED_AT, (datetime.now(UTC) - timedelta(hours=2)).timestamp())
    assert verify_now(redis_client) is False
    (failing,) = open_incidents()
    assert (failing.title, failing.severity) == ("IncidentBackupFailing", "SEV2")
    assert "no backup in" in description(failing.id)


def _truncate(dump: Path) -> None:
    with dump.open("r+b") as file:
        file.truncate(dump.stat().st_size // 2)


def _flip_a_bit(dump: Path) -> None:
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))


def _remove(dump: Path) -> None:
    dump.unlink()
    dump.with_name(dump.name.removesuffix(".dump") + ".manifest.json").unlink()


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (_truncate, "does not match the SHA-256 in its manifest"),
        (_flip_a_bit, "does not match the SHA-256 in its manifest"),
        (_remove, "no backup in"),
        (None, "older than max_age"),
    ],
    ids=["truncated", "bit-flipped", "missing", "too-old"],
)
def test_each_failed_verification_opens_one_internal_incident_that_the_next_good_one_resolves(
    jobs, redis_client, database_url, monkeypatch, damage, problem
):
    from incident.maintenance import jobs as jobs_module

    redis_client.set(keys.BACKUP_ARMED_AT, (datetime.now(UTC) - timedelta(hours=2)).timestamp())
    good = create_backup(database_url, jobs, keep=2)
    assert verify_now(redis_client) is True
    assert all_incidents() == []

    if damage is not None:
        damage(good.path)
    else:
        # Two hours on, the newest backup is past max_age (1h).
        monkeypatch.setattr(jobs_module, "clock", lambda: datetime.now(UTC) + timedelta(hours=2))
    assert verify_now(redis_client) is False
    assert verify_now(redis_client) is False
    (failing,) = open_incidents()
    assert (failing.title, failing.severity) == ("IncidentBackupFailing", "SEV2")
    assert problem in description(failing.id)

    monkeypatch.setattr(jobs_module, "clock", lambda: datetime.now(UTC))
    create_backup(database_url, jobs, keep=2)
    assert verify_now(redis_client) is True
    assert open_incidents() == []
    assert [i.status for i in all_incidents()] == ["resolved"]
