"""The web console with 10,000 incidents: GET / at saturation, then p50/p99 open loop at
half that rate; the same for GET /incidents/{id} and GET /stats.

A scratch database on the bench's PostgreSQL is migrated and filled with bulk SQL
(incidents over the last 30 days, a few still open, two alerts and four timeline
entries each), then one ``incident api`` (one uvicorn worker) serves it, signed in
as ``incident dev``'s local user: the pages are read with that session cookie. The
reference, measured the same way in the same run, is ``GET /healthz`` of the same
api: what the process answers when no page is rendered.
"""

from __future__ import annotations

import re
import statistics
import time
import uuid

import httpx
import psycopg

from bench import loadgen
from bench.stack import ApiProcess, Stack
from incident.maintenance.pgtools import PgTarget
from incident.migrate import upgrade

INCIDENTS = 10_000
OPEN = 120  # still triggered or acknowledged: the list shows them first
LIST_P99_TARGET_MS = 200.0

_FILL = [
    """INSERT INTO alert_groups (group_hash, receiver, group_key)
       SELECT md5('console-group-' || i), 'incident',
              '{}:{alertname="' || (ARRAY['HighErrorRate','HighLatency','DiskFull','PodCrashLooping'])[1 + i %% 4]
              || '", service="svc-' || i || '"}'
       FROM generate_series(1, %(n)s) AS i""",
    # Spread over the last 30 days in id order (r = 1 the newest); the newest OPEN still open.
    """INSERT INTO incidents (key, group_id, title, summary, severity, status, labels,
                              group_labels, receiver, external_url, created_at, updated_at,
                              acknowledged_at, acknowledged_by, resolved_at, resolved_by)
       SELECT md5('console-incident-' || g.id), g.id, a.name || ' svc-' || g.id,
              'error budget burning for svc-' || g.id,
              (ARRAY['SEV1','SEV2','SEV2','SEV3','SEV3','SEV3','SEV4'])[1 + g.id %% 7],
              CASE WHEN o.r > %(open)s THEN 'resolved'
                   WHEN g.id %% 3 = 0 THEN 'acknowledged' ELSE 'triggered' END,
              jsonb_build_object('alertname', a.name, 'service', 'svc-' || g.id,
                                 'env', 'prod', 'team', (ARRAY['payments','search','core'])[1 + g.id %% 3]),
              jsonb_build_object('alertname', a.name, 'service', 'svc-' || g.id),
              'incident', 'http://alertmanager:9093', t.at, t.at,
              CASE WHEN o.r > %(open)s OR g.id %% 3 = 0
                   THEN t.at + (1 + g.id %% 29) * interval '1 minute' END,
              CASE WHEN o.r > %(open)s OR g.id %% 3 = 0
                   THEN '{"by": "web", "user": "oncall@example.com", "name": "oncall@example.com"}'::jsonb END,
              CASE WHEN o.r > %(open)s THEN t.at + (10 + g.id %% 170) * interval '1 minute' END,
              CASE WHEN o.r > %(open)s THEN '{"by": "alertmanager"}'::jsonb END
       FROM alert_groups AS g,
            LATERAL (SELECT (ARRAY['HighErrorRate','HighLatency','DiskFull','PodCrashLooping'])[1 + g.id %% 4] AS name) AS a,
            LATERAL (SELECT %(n)s + 1 - g.id AS r) AS o,
            LATERAL (SELECT now() - o.r * (interval '30 days' / %(n)s) AS at) AS t""",
    """INSERT INTO alerts (incident_id, fingerprint, status, severity, labels, annotations,
                           starts_at, ends_at, generator_url)
       SELECT i.id, substr(md5('console-alert-' || i.id || '-' || k), 1, 16),
              CASE WHEN i.status = 'resolved' THEN 'resolved' ELSE 'firing' END, i.severity,
              i.labels || jsonb_build_object('instance', 'pod-' || k),
              jsonb_build_object('summary', i.summary), i.created_at, i.resolved_at,
              'http://prometheus:9090/graph?g0.expr=job%%3Aerrors%%3Arate5m'
       FROM incidents AS i, generate_series(1, 2) AS k""",
    """INSERT INTO timeline_entries (incident_id, at, kind, detail)
       SELECT i.id, e.at, e.kind, e.detail
       FROM incidents AS i,
            LATERAL (VALUES
              (i.created_at, 'opened', jsonb_build_object('severity', i.severity, 'alerts', 2)),
              (i.created_at + interval '2 seconds', 'notified',
               jsonb_build_object('channel', 'pagerduty', 'action', 'trigger')),
              (i.acknowledged_at, 'acknowledged', i.acknowledged_by),
              (i.resolved_at, 'resolved', i.resolved_by)
            ) AS e(at, kind, detail)
       WHERE e.at IS NOT NULL""",
    "ANALYZE",
]


def run(stack: Stack, *, quick: bool, wrk: str | None) -> dict:
    plan = {
        "incidents": INCIDENTS,
        "open_incidents": OPEN,
        "api_workers": 1,
        "saturation_runs": 1 if quick else 3,
        "saturation_s": 3 if quick else 6,
        "connections": 8,
        "latency_s": 5 if quick else 15,
        "latency_warmup_s": 1 if quick else 2,
        "latency_connections": 16,
    }
    server = PgTarget.from_url(stack.database_url)
    name = f"incident_bench_console_{uuid.uuid4().hex[:8]}"
    url = _database_url(stack.database_url, name)
    with psycopg.connect(server.conninfo, password=server.password, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        t0 = time.monotonic()
        upgrade(url)
        counts = _fill(PgTarget.from_url(url))
        fill_s = time.monotonic() - t0
        print(f"bench: console: {counts['incidents']} incidents in {fill_s:.1f} s", flush=True)
        api = stack.api(plan["api_workers"], env={
            "INCIDENT_DATABASE_URL": url,
            "INCIDENT_DEV_MODE": "1",
            "INCIDENT_SESSION_SECRET": "bench-console-session-secret-2b7f",
        }, name="console")
        try:
            api.wait_ready()
            cookie, incident_id = _sign_in(api, counts["middle_id"])
            pages = {
                "healthz": "/healthz",
                "list": "/",
                "incident": f"/incidents/{incident_id}",
                "stats": "/stats",
            }
            measured = {
                page: _measure(api, path, cookie, plan, wrk) for page, path in pages.items()
            }
        finally:
            api.stop()
    finally:
        with psycopg.connect(server.conninfo, password=server.password, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    listing = measured["list"]["latency_at_half"]
    return {
        "plan": plan,
        "generator": "wrk (saturation) + python asyncio open loop (latency)"
        if wrk else "python asyncio closed loop (saturation) + open loop (latency)",
        "row_counts": counts,
        "fill_s": round(fill_s, 1),
        "pages": pages,
        "measured": measured,
        "list_p99_target_ms": LIST_P99_TARGET_MS,
        "target_met": listing["p99_ms"] < LIST_P99_TARGET_MS
        and listing["errors"] + listing["non_2xx"] == 0,
    }


def _database_url(server_url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def _fill(target: PgTarget) -> dict:
    with psycopg.connect(target.conninfo, password=target.password, autocommit=True) as conn:
        for statement in _FILL:
            # Always with parameters, so every statement spells a literal % as %%.
            conn.execute(statement, {"n": INCIDENTS, "open": OPEN})
        counts = {
            table: int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            for table in ("incidents", "alerts", "timeline_entries")
        }
        counts["middle_id"] = int(conn.execute(
            "SELECT id FROM incidents ORDER BY id OFFSET %(half)s LIMIT 1", {"half": INCIDENTS // 2}
        ).fetchone()[0])
    return counts


def _sign_in(api: ApiProcess, incident_id: int) -> tuple[str, int]:
    """The session cookie of ``incident dev``'s local user, checked on the pages measured."""
    with httpx.Client(base_url=api.url, timeout=10, follow_redirects=True) as client:
        answer = client.get("/login", params={"next": "/"})
        if answer.url.path == "/login":  # a form to submit, with its CSRF token
            answer = client.post("/login", data=_form_fields(answer.text))
        cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
        for path in ("/", f"/incidents/{incident_id}", "/stats"):
            page = client.get(path, follow_redirects=False)
            if page.status_code != 200:
                raise RuntimeError(f"signed in, GET {path} answered {page.status_code}")
        return cookie, incident_id


def _form_fields(html: str) -> dict[str, str]:
    """The hidden fields of the page's form (the CSRF token, the next page)."""
    return dict(re.findall(r'<input[^>]*type="hidden"[^>]*name="([^"]+)"[^>]*value="([^"]*)"', html))


def _measure(api: ApiProcess, path: str, cookie: str, plan: dict, wrk: str | None) -> dict:
    target = loadgen.Target(api.host, api.port, path, method="GET", cookie=cookie)
    _saturate(wrk, target, plan, 2)  # warm-up: connections, template cache, pools
    runs = [_saturate(wrk, target, plan, plan["saturation_s"])
            for _ in range(plan["saturation_runs"])]
    rps = statistics.median(r["rps"] for r in runs)
    latency = loadgen.open_loop(
        target, lambda i: b"", rate=max(1.0, rps / 2), seconds=plan["latency_s"],
        warmup=plan["latency_warmup_s"], connections=plan["latency_connections"],
    ).summary()
    return {
        "saturation_rps_median": rps,
        "saturation_rps_runs": [r["rps"] for r in runs],
        "saturation_errors": sum(r["errors"] for r in runs),
        "latency_at_half": latency,
    }


def _saturate(wrk: str | None, target: loadgen.Target, plan: dict, seconds: float) -> dict:
    if wrk:
        return loadgen.wrk_saturate(wrk, target, b"", connections=plan["connections"],
                                    seconds=seconds)
    return loadgen.python_saturate(target, b"", connections=plan["connections"], seconds=seconds)
