"""/metrics through a real api and two real worker processes: every metric appears and moves."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from incident.db import session_scope
from incident.maintenance.backup_verify import verify_latest
from incident.maintenance.backups import create_backup
from incident.notifications.models import EscalationTimer
from tests import factories
from tests.conftest import WEBHOOK_TOKEN, ApiProcess, WorkerProcess, wait_for
from tests.remediation.target import FakeTarget

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
HOOK = {"Authorization": f"Bearer {WEBHOOK_TOKEN}", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def target() -> Iterator[FakeTarget]:
    with FakeTarget() as fake:
        yield fake


@pytest.fixture(scope="module")
def metrics_env(incident_environment, target, tmp_path_factory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("metrics")
    rules = directory / "rules.yml"
    rules.write_text(f"""
escalation:
  SEV1: {{pagerduty: critical, slack: true, ack_timeout: 1h}}
remediations:
  - name: restart-api
    matchers: ['alertname="HighErrorRate"']
    action: http
    with: {{url: "{target.url}/restart/{{labels.service}}"}}
    circuit_breaker: {{failure_threshold: 1, reset_after: 1h}}
maintenance:
  watchdog: {{alertname: Watchdog, max_silence: 1h}}
""")
    (directory / "backups").mkdir()
    return {
        **incident_environment,
        "INCIDENT_RULES_FILE": str(rules),
        "INCIDENT_BACKUP_DIR": str(directory / "backups"),
    }


@pytest.fixture(scope="module")
def stack(metrics_env, tmp_path_factory):
    redis.Redis.from_url(metrics_env["INCIDENT_BROKER_URL"]).flushdb()
    logs = tmp_path_factory.mktemp("logs")
    # Two single-process workers, so "counted together" means two processes.
    # They leave the maintenance queue alone, so its depth can be watched.
    workers = [
        WorkerProcess(metrics_env, logs / f"worker{n}.log", concurrency=1,
                      queues="ingest,page,notify,remediate")
        for n in (1, 2)
    ]
    api = ApiProcess(metrics_env, logs / "api.log")
    for process in (*workers, api):
        process.wait_ready()
    yield api, workers
    for process in (api, *workers):
        process.stop()


def scrape(api) -> dict[tuple[str, tuple], float]:
    response = httpx.get(f"{api.url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def post(api, body, headers=HOOK) -> int:
    return httpx.post(f"{api.url}/webhooks/alertmanager", content=orjson.dumps(body),
                      headers=headers, timeout=10).status_code


def test_every_metric_appears_and_moves_with_its_event(clean_state, stack, metrics_env, target):
    api, workers = stack
    before = scrape(api)
    for name in ("incident_webhooks_total", "incident_alerts_received_total",
                 "incident_incidents_opened_total", "incident_open_incidents",
                 "incident_queue_depth", "incident_escalation_lag_seconds", "incident_backups"):
        assert any(key[0] == name for key in before), f"{name} missing before any event"
    assert value(before, "incident_metrics_source_up", source="database") == 1

    # Twenty groups over two worker processes; one with two alerts.
    for n in range(19):
        assert post(api, factories.payload(factories.alert(service=f"svc-{n}"))) == 202
    two = factories.payload(factories.alert(service="pair", instance="a"),
                            factories.alert(service="pair", instance="b"))
    assert post(api, two) == 202
    assert post(api, {"version": "4"}) == 422
    assert post(api, factories.payload(), headers={**HOOK, "Authorization": "Bearer wrong"}) == 401
    critical = factories.payload(factories.alert(alertname="DiskFull", severity="critical",
                                                 env="prod", service="db"))
    assert post(api, critical) == 202
    assert post(api, factories.payload(factories.alert(alertname="Watchdog"))) == 202

    def opened():
        samples = scrape(api)
        total = sum(value(samples, "incident_incidents_opened_total", severity=s)
                    for s in ("SEV1", "SEV2", "SEV3", "SEV4"))
        done = value(samples, "incident_remediations_total", remediation="restart-api",
                     outcome="succeeded")
        return samples if total == 21 and done == 20 else None

    after = wait_for(opened, timeout=60, interval=0.5, what="21 incidents and 20 remediations counted")
    for worker in workers:
        assert "incident.incidents.ingest_webhook" in worker.log(), "each worker took a share"
    # Each incident change timed from its webhook's 202, by whichever worker made it;
    # the Watchdog's webhook changed no incident.
    wait_for(lambda: value(scrape(api), "incident_webhook_to_incident_seconds_count") == 21,
             timeout=10, what="21 webhook-to-incident observations from both workers")

    assert value(after, "incident_webhooks_total", outcome="accepted") == 22
    assert value(after, "incident_webhooks_total", outcome="invalid") == 1
    assert value(after, "incident_webhooks_total", outcome="unauthorized") == 1
    assert value(after, "incident_alerts_received_total") == 23
    assert value(after, "incident_incidents_opened_total", severity="SEV1") == 1
    assert value(after, "incident_incidents_opened_total", severity="SEV3") == 20
    assert value(after, "incident_open_incidents", severity="SEV3", status="triggered") == 20
    assert value(after, "incident_open_incidents", severity="SEV1", status="triggered") == 1
    assert value(after, "incident_watchdog_last_seen_timestamp_seconds") > 0
    wait_for(lambda: value(scrape(api), "incident_notifications_total", channel="console",
                           outcome="sent") >= 21, timeout=30, what="console notifications counted")
    assert value(after, "incident_breaker_state", remediation="restart-api", key="",
                 state="closed") == 1

    # A failing target opens the breaker (threshold 1).
    target.failing = True
    post(api, factories.payload(factories.alert(service="broken")))
    wait_for(lambda: value(scrape(api), "incident_breaker_state", remediation="restart-api",
                           key="", state="open") == 1, timeout=30, what="breaker open")
    wait_for(lambda: value(scrape(api), "incident_remediations_total",
                           remediation="restart-api", outcome="failed") == 1,
             timeout=30, what="failed remediation counted")
    target.failing = False

    # Escalation lag: a due timer nobody fires (no beat here).
    with session_scope() as session:
        session.execute(update(EscalationTimer).values(
            due_at=datetime.now(UTC) - timedelta(minutes=5)))
    assert value(scrape(api), "incident_escalation_lag_seconds") >= 300

    # Queue depth: nobody here takes maintenance work.
    from incident.worker.tasks.maintenance import purge_resolved_incidents

    for _ in range(3):
        purge_resolved_incidents.apply_async()
    assert value(scrape(api), "incident_queue_depth", queue="maintenance") == 3

    # Backups: the ages appear once there is a good backup and verification.
    samples = scrape(api)
    assert ("incident_backup_last_good_age_seconds", ()) not in samples
    backups = metrics_env["INCIDENT_BACKUP_DIR"]
    create_backup(metrics_env["INCIDENT_DATABASE_URL"], backups, keep=1)
    assert verify_latest(metrics_env["INCIDENT_DATABASE_URL"], backups,
                         max_age=timedelta(hours=1), mode="list").ok
    samples = scrape(api)
    assert 0 <= value(samples, "incident_backup_last_good_age_seconds") < 60
    assert 0 <= value(samples, "incident_backup_verification_last_good_age_seconds") < 60
    assert value(samples, "incident_backups") == 1
    assert value(samples, "incident_backup_verification_ok") == 1

    # Whatever the example alert rules and dashboard query is something we export.
    exported = {name for name, _ in samples}
    for example in ("prometheus-rules.yml", "grafana-dashboard.json"):
        used = set(re.findall(r"\bincident_[a-z_]+", (EXAMPLES / example).read_text()))
        used -= {"incident_internal", "incident_severity"}
        assert used and used <= exported, (example, used - exported)


def test_latency_histograms_are_exported_from_start_up_with_every_label_set_at_zero(
    clean_state, stack
):
    from incident.metrics import HISTOGRAMS

    api, _ = stack
    text = httpx.get(f"{api.url}/metrics", timeout=10).text
    samples = scrape(api)
    for name, spec in HISTOGRAMS.items():
        assert f"# TYPE {name} histogram" in text
        for values in spec.known:
            labels = tuple(sorted(zip(spec.labels, values, strict=True)))
            assert samples[(f"{name}_count", labels)] == 0
            assert samples[(f"{name}_bucket", tuple(sorted((*labels, ("le", "+Inf")))))] == 0
    assert (
        "incident_webhook_to_notification_seconds_bucket",
        (("channel", "pagerduty"), ("le", "30.0"), ("severity", "SEV1")),
    ) in samples


def test_metrics_need_the_token_when_one_is_set(metrics_env, tmp_path):
    env = {**metrics_env, "INCIDENT_METRICS_TOKEN": "scrape-secret"}
    api = ApiProcess(env, tmp_path / "api.log")
    try:
        api.wait_ready()
        assert httpx.get(f"{api.url}/metrics", timeout=10).status_code == 401
        answer = httpx.get(f"{api.url}/metrics", headers={"Authorization": "Bearer scrape-secret"},
                           timeout=10)
        assert answer.status_code == 200
    finally:
        api.stop()


def test_a_source_that_cannot_be_read_is_left_out_not_fatal(metrics_env, tmp_path):
    env = {**metrics_env, "INCIDENT_DATABASE_URL":
           "postgresql+psycopg://nobody@127.0.0.1:1/none"}
    api = ApiProcess(env, tmp_path / "api.log")
    try:
        api.wait_ready()
        samples = scrape(api)
        assert value(samples, "incident_metrics_source_up", source="database") == 0
        assert value(samples, "incident_metrics_source_up", source="redis") == 1
        assert any(key[0] == "incident_webhooks_total" for key in samples)
    finally:
        api.stop()


def test_the_watchdog_family_is_described_before_the_first_watchdog_and_sampled_after(
    clean_state, stack
):
    api, _ = stack
    family = "incident_watchdog_last_seen_timestamp_seconds"
    text = httpx.get(f"{api.url}/metrics", timeout=10).text
    assert f"# HELP {family} " in text
    assert f"# TYPE {family} gauge" in text
    # Never seen: no sample (absent() sees it), not NaN (which every comparison ignores).
    assert not [line for line in text.splitlines() if line.startswith(family)]
    samples = scrape(api)
    assert value(samples, "incident_watchdog_configured") == 1
    assert ("incident_watchdog_configured", ()) in samples

    assert post(api, factories.payload(factories.alert(alertname="Watchdog"))) == 202
    wait_for(lambda: value(scrape(api), family) > 0, timeout=30, what="the Watchdog recorded")


def test_watchdog_configured_is_zero_when_the_rules_file_sets_no_watchdog(
    clean_state, incident_environment
):
    from incident.api.metrics import render
    from incident.config import get_settings
    from incident.rules import load_rules

    body, _ = render(get_settings(), load_rules(None))
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }
    assert samples["incident_watchdog_configured"] == 0
    assert "incident_watchdog_last_seen_timestamp_seconds" not in samples


PROMTOOL_TEST = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - {{series: 'incident_watchdog_configured{{instance="never"}}', values: '1x20'}}
      - {{series: 'incident_metrics_source_up{{instance="never",source="redis"}}', values: '1x20'}}
    alert_rule_test:
      - {{eval_time: 5m, alertname: IncidentWatchdogNeverSeen, exp_alerts: []}}
      - eval_time: 15m
        alertname: IncidentWatchdogNeverSeen
        exp_alerts:
          - exp_labels: {{severity: critical, component: incident}}
            exp_annotations:
              summary: incident has never received a Watchdog alert
              description: "maintenance.watchdog is set, but no Watchdog has arrived since incident started: Prometheus, Alertmanager or the route to incident is broken."
  - interval: 1m
    input_series:
      - {{series: 'incident_watchdog_configured{{instance="heard"}}', values: '1x20'}}
      - {{series: 'incident_metrics_source_up{{instance="heard",source="redis"}}', values: '1x20'}}
      - {{series: 'incident_watchdog_last_seen_timestamp_seconds{{instance="heard"}}', values: '0+60x20'}}
      - {{series: 'incident_watchdog_configured{{instance="off"}}', values: '0x20'}}
    alert_rule_test:
      - {{eval_time: 15m, alertname: IncidentWatchdogNeverSeen, exp_alerts: []}}
"""


def test_the_example_rules_alert_when_a_configured_watchdog_was_never_seen(tmp_path):
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    spec = tmp_path / "watchdog-test.yml"
    spec.write_text(PROMTOOL_TEST.format(rules=EXAMPLES / "prometheus-rules.yml"))
    result = subprocess.run([promtool, "test", "rules", str(spec)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
