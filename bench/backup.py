"""Backup and verify-by-restore times for a database of 100,000 incidents.

The database is a scratch one on the bench's PostgreSQL, migrated, then filled with bulk
SQL (an alert and two timeline entries per incident): building it through the ORM would
take longer than what is measured. Each round is ``create_backup`` then
``verify_latest(mode="restore")``; the median of three rounds when they fit the budget.
"""

from __future__ import annotations

import shutil
import statistics
import time
import uuid
from datetime import timedelta

import psycopg

from bench.stack import Stack
from incident.maintenance.backups import create_backup, verify_latest
from incident.maintenance.pgtools import PgTarget
from incident.migrate import upgrade

INCIDENTS = 100_000
QUICK_INCIDENTS = 5_000
ROUNDS = 3
# Further rounds run only while the first one's time, times the rounds left, fits this.
BUDGET_S = 120.0

_FILL = [
    """INSERT INTO alert_groups (group_hash, receiver, group_key)
       SELECT md5('group-' || i), 'incident', '{}:{alertname="HighErrorRate", service="svc-' || i || '"}'
       FROM generate_series(1, %(n)s) AS i""",
    """INSERT INTO incidents (key, group_id, title, summary, severity, status, labels,
                              group_labels, receiver, external_url, created_at, updated_at,
                              resolved_at)
       SELECT md5('incident-' || g.id), g.id, 'HighErrorRate svc-' || g.id,
              '5xx rate above 5%% for 5 minutes',
              (ARRAY['SEV1','SEV2','SEV3','SEV4'])[1 + g.id %% 4], 'resolved',
              jsonb_build_object('alertname', 'HighErrorRate', 'service', 'svc-' || g.id,
                                 'severity', 'critical', 'env', 'prod'),
              jsonb_build_object('alertname', 'HighErrorRate', 'service', 'svc-' || g.id),
              'incident', 'http://alertmanager:9093',
              now() - g.id * interval '1 minute', now(), now()
       FROM alert_groups AS g""",
    """INSERT INTO alerts (incident_id, fingerprint, status, severity, labels, annotations,
                           starts_at, ends_at, generator_url)
       SELECT i.id, substr(md5('alert-' || i.id), 1, 16), 'resolved', i.severity, i.labels,
              '{"summary": "5xx rate above 5%% for 5 minutes"}'::jsonb, i.created_at, now(),
              'http://prometheus:9090/graph?g0.expr=job%%3Aerrors%%3Arate5m'
       FROM incidents AS i""",
    """INSERT INTO timeline_entries (incident_id, at, kind, detail)
       SELECT i.id, i.created_at + k * interval '1 minute', (ARRAY['opened','resolved'])[k],
              jsonb_build_object('severity', i.severity, 'alerts', 1)
       FROM incidents AS i, generate_series(1, 2) AS k""",
    "ANALYZE",
]


def run(stack: Stack, *, quick: bool) -> dict:
    incidents = QUICK_INCIDENTS if quick else INCIDENTS
    server = PgTarget.from_url(stack.database_url)
    name = f"incident_bench_backup_{uuid.uuid4().hex[:8]}"
    url = _database_url(stack.database_url, name)
    backup_dir = stack.workdir / "backups"
    with psycopg.connect(server.conninfo, password=server.password, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        t0 = time.monotonic()
        upgrade(url)
        database_bytes = _fill(PgTarget.from_url(url), incidents)
        fill_s = time.monotonic() - t0
        print(f"bench: backup: {incidents} incidents in {fill_s:.1f} s", flush=True)
        rounds = [_round(url, backup_dir)]
        first = rounds[0]["backup_s"] + rounds[0]["verify_s"]
        if not quick and first * (ROUNDS - 1) <= BUDGET_S:
            rounds += [_round(url, backup_dir) for _ in range(ROUNDS - 1)]
    finally:
        with psycopg.connect(server.conninfo, password=server.password, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(backup_dir, ignore_errors=True)
    return {
        "incidents": incidents,
        "row_counts": rounds[-1]["row_counts"],
        "database_bytes": database_bytes,
        "fill_s": round(fill_s, 1),
        "server_version": rounds[-1]["server_version"],
        "pg_dump_version": rounds[-1]["pg_dump_version"],
        "rounds": rounds,
        "dump_bytes": rounds[-1]["dump_bytes"],
        "backup_s_median": statistics.median(r["backup_s"] for r in rounds),
        "verify_s_median": statistics.median(r["verify_s"] for r in rounds),
        "restore_s_median": statistics.median(r["restore_s"] for r in rounds),
    }


def _database_url(server_url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def _fill(target: PgTarget, incidents: int) -> int:
    with psycopg.connect(target.conninfo, password=target.password, autocommit=True) as conn:
        for statement in _FILL:
            # Always with parameters, so every statement spells a literal % as %%.
            conn.execute(statement, {"n": incidents})
        return int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])


def _round(url: str, backup_dir) -> dict:
    made = create_backup(url, backup_dir, keep=1)
    t0 = time.monotonic()
    checked = verify_latest(url, backup_dir, max_age=timedelta(hours=1), mode="restore")
    verify_s = time.monotonic() - t0
    if not checked.ok:
        raise RuntimeError(f"the bench's backup did not verify: {checked.problems}")
    assert checked.restore_seconds is not None
    print(
        f"bench: backup: dump {made.size / 2**20:.1f} MiB in {made.seconds:.1f} s, "
        f"verify {verify_s:.1f} s (pg_restore {checked.restore_seconds:.1f} s)",
        flush=True,
    )
    return {
        "backup_s": made.seconds,
        "verify_s": round(verify_s, 3),
        "restore_s": checked.restore_seconds,
        "dump_bytes": made.size,
        "row_counts": made.row_counts,
        "server_version": made.server_version,
        "pg_dump_version": made.pg_dump_version,
    }
