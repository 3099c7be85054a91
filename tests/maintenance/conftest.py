"""A database of this package's own, migrated and filled, to back up and restore."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from incident.db import engine_for
from incident.maintenance.pgtools import PgTarget
from incident.migrate import upgrade
from tests.conftest import create_database, drop_database

SOURCE_INCIDENTS = 200

# An alert and two timeline entries per incident; a notification and a timer for some.
_FILL = [
    """INSERT INTO alert_groups (group_hash, receiver, group_key)
       SELECT md5('group-' || i), 'incident', '{}:{service="svc-' || i || '"}'
       FROM generate_series(1, %(n)s) AS i""",
    """INSERT INTO incidents (key, group_id, title, summary, severity, status, labels,
                              group_labels, receiver, external_url, created_at, updated_at)
       SELECT md5('incident-' || g.id), g.id, 'HighErrorRate svc-' || g.id, '5xx above 5%%',
              (ARRAY['SEV1','SEV2','SEV3','SEV4'])[1 + g.id %% 4],
              (ARRAY['triggered','acknowledged','resolved'])[1 + g.id %% 3],
              jsonb_build_object('alertname', 'HighErrorRate', 'service', 'svc-' || g.id),
              jsonb_build_object('service', 'svc-' || g.id), 'incident',
              'http://alertmanager:9093', now(), now()
       FROM alert_groups AS g""",
    """INSERT INTO alerts (incident_id, fingerprint, status, severity, labels, annotations,
                           starts_at, generator_url)
       SELECT i.id, substr(md5('alert-' || i.id), 1, 16), 'firing', i.severity, i.labels,
              '{"summary": "5xx above 5%%"}', now(), 'http://prometheus:9090/graph'
       FROM incidents AS i""",
    """INSERT INTO timeline_entries (incident_id, at, kind, detail)
       SELECT i.id, now(), (ARRAY['opened','alert_added'])[k], jsonb_build_object('n', k)
       FROM incidents AS i, generate_series(1, 2) AS k""",
    """INSERT INTO notifications (incident_id, channel, action, step, priority, status,
                                  attempts, created_at)
       SELECT i.id, 'console', 'trigger', 0, false, 'sent', 1, now()
       FROM incidents AS i WHERE i.id %% 2 = 0""",
    """INSERT INTO escalation_timers (incident_id, kind, severity, due_at, fired, active)
       SELECT i.id, 'ack', i.severity, now() + interval '5 minutes', 0, true
       FROM incidents AS i WHERE i.id %% 5 = 0""",
]


@pytest.fixture(scope="module")
def source_url(postgres_server_url: str) -> Iterator[str]:
    """A migrated database of SOURCE_INCIDENTS incidents, for this module alone."""
    name = f"incident_backup_{uuid.uuid4().hex[:8]}"
    url = create_database(postgres_server_url, name)
    try:
        upgrade(url)
        engine_for(url).dispose()
        target = PgTarget.from_url(url)
        with psycopg.connect(target.conninfo, password=target.password) as conn:
            for statement in _FILL:
                conn.execute(statement, {"n": SOURCE_INCIDENTS})
        yield url
    finally:
        drop_database(postgres_server_url, name)


def database_exists(server_url: str, name: str) -> bool:
    target = PgTarget.from_url(server_url)
    with psycopg.connect(target.conninfo, password=target.password, autocommit=True) as conn:
        return (
            conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            is not None
        )
