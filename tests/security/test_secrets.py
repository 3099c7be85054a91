"""A full run leaves the configured secrets nowhere: not in any log file or
process output, not in Flower's view of the tasks, not in any API answer.

Every process runs as operators run it (api, worker, beat, Flower), logging at
DEBUG into INCIDENT_LOG_DIR, while the run goes through its error paths too: a
Slack 500 and a Slack refusal, a PagerDuty 400, a remediation target answering
503, a remediation command failing, an escalation, manual transitions, and
every kind of refused request. Then everything they wrote or answered is
searched for each secret, as written and as a URL or JSON would carry it.
"""

from __future__ import annotations

import gzip
import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import psycopg
import pytest
import redis
from sqlalchemy.engine import make_url

from tests import factories
from tests.conftest import ApiProcess, ChildProcess, WorkerProcess, _libpq, wait_for
from tests.fakes.pagerduty import FakePagerDuty
from tests.fakes.slack import FakeSlack
from tests.remediation.target import FakeTarget
from tests.security.conftest import recognisable_secret, spellings
from tests.worker.test_flower import LOGIN, FlowerProcess

pytestmark = [pytest.mark.security, pytest.mark.timeout(300)]

CHANNEL = "incidents"
WAIT = 60.0


class BeatProcess(ChildProcess):
    name = "beat"

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        super().__init__(
            [sys.executable, "-m", "incident", "beat", "--loglevel", "DEBUG",
             "--schedule", str(log_path.with_suffix(".schedule"))],
            log_path,
            env,
        )

    def wait_ready(self) -> None:
        wait_for(lambda: self.check_alive() or "beat: Starting" in self.log(), timeout=30,
                 what="beat started")


class Run:
    """Everything the run's processes wrote, and every answer they gave."""

    def __init__(self, secrets: dict[str, str], log_dir: Path, output_dir: Path) -> None:
        self.secrets = secrets
        self.log_dir = log_dir
        self.output_dir = output_dir
        self.answers: list[tuple[str, str]] = []  # (what was asked, the answer's text)

    def keep(self, what: str, response: httpx.Response) -> httpx.Response:
        self.answers.append((f"{what}: {response.status_code}", response.text))
        self.answers.append((f"{what}: headers", json.dumps(dict(response.headers))))
        return response

    def files(self) -> Iterator[tuple[str, str]]:
        for directory in (self.log_dir, self.output_dir):
            for path in sorted(directory.rglob("*")):
                if not path.is_file():
                    continue
                raw = path.read_bytes()
                if path.suffix == ".gz":
                    raw = gzip.decompress(raw)
                yield str(path), raw.decode(errors="replace")

    def texts(self) -> Iterator[tuple[str, str]]:
        yield from self.files()
        yield from self.answers

    def leaks(self) -> list[str]:
        found = []
        for where, text in self.texts():
            for name, secret in self.secrets.items():
                for spelling in spellings(secret):
                    at = text.find(spelling)
                    if at >= 0:
                        context = text[max(0, at - 150): at + len(spelling) + 50]
                        found.append(f"{name} in {where}: …{context}…")
        return found


@pytest.fixture
def secrets(database_url: str, redis_url: str) -> dict[str, str]:
    names = ("webhook", "api", "metrics", "slack", "deployer")
    given = {name: recognisable_secret(name) for name in names}
    # Both services here accept any password: local PostgreSQL trusts local
    # connections and ignores it, Redis's default user is `nopass`. Probed, so a
    # server that would refuse is left without one rather than failing the run.
    password = recognisable_secret("dbpass")
    try:
        psycopg.connect(_libpq(_url_with_password(database_url, password)), connect_timeout=5).close()
        given["database password"] = password
    except psycopg.OperationalError:
        pass  # the server checks passwords: the database URL keeps none
    password = recognisable_secret("redispass")
    try:
        redis.Redis.from_url(_url_with_password(redis_url, password, redis_url=True)).ping()
        given["redis password"] = password
    except redis.RedisError:
        pass  # Redis requires a real password: the broker URL keeps none
    # PagerDuty routing keys are 32 characters of [A-Za-z0-9]; keep its shape.
    given["pagerduty"] = "PDKEY" + uuid.uuid4().hex[:27].upper()
    return given


def _url_with_password(url: str, password: str | None, *, redis_url: bool = False) -> str:
    if password is None:
        return url
    if redis_url:
        # Redis 6+ ACL form: AUTH default <password>.
        parts = make_url(url)
        return f"redis://default:{quote(password, safe='')}@{parts.host}:{parts.port}/{parts.database}"
    return make_url(url).set(password=password).render_as_string(hide_password=False)


RULES = """
escalation:
  SEV1: {{pagerduty: critical, slack: true, ack_timeout: 2s, repeat: 1}}
  SEV2: {{pagerduty: error, slack: true}}
remediations:
  - name: restart-service
    matchers: ['alertname="HighErrorRate"']
    action: http
    with:
      url: "{target}/services/{{labels.service}}/restart"
      headers:
        X-Deployer-Key: "{{env.DEPLOYER_TOKEN}}"
        Authorization: "Bearer {{env.DEPLOYER_TOKEN}}"
      timeout: 5s
    retry: {{attempts: 2, backoff: 200ms, max_backoff: 1s}}
    circuit_breaker: {{failure_threshold: 100, reset_after: 1m}}
    on_failure: notify
  - name: clear-cache
    matchers: ['alertname="HighErrorRate"']
    action: command
    with:
      argv: ["{python}", "{script}", "--", "{{labels.service}}"]
      env: {{DEPLOY_KEY: "{{env.DEPLOYER_TOKEN}}"}}
      timeout: 20s
    circuit_breaker: {{failure_threshold: 100, reset_after: 1m}}
    on_failure: notify
"""

FAILING_COMMAND = """\
import sys
print("clearing the cache of", sys.argv[-1])
print("cache server refused the request", file=sys.stderr)
sys.exit(3)
"""


@pytest.fixture
def run(secrets, incident_environment, database_url, redis_url, clean_state, tmp_path) -> Iterator[dict[str, Any]]:
    log_dir, output_dir = tmp_path / "logs", tmp_path / "output"
    log_dir.mkdir()
    output_dir.mkdir()
    script = tmp_path / "clear_cache.py"
    script.write_text(FAILING_COMMAND)
    slack = FakeSlack(token=secrets["slack"], channels=(CHANNEL,)).start()
    pagerduty = FakePagerDuty(routing_key=secrets["pagerduty"]).start()
    target = FakeTarget().start()
    target.failing = True
    rules = tmp_path / "rules.yml"
    rules.write_text(RULES.format(target=target.url, python=sys.executable, script=script))
    broker = _url_with_password(redis_url, secrets.get("redis password"), redis_url=True)
    env = {
        **incident_environment,
        "INCIDENT_DATABASE_URL": _url_with_password(database_url, secrets.get("database password")),
        "INCIDENT_BROKER_URL": broker,
        "INCIDENT_REDIS_URL": broker,
        "INCIDENT_WEBHOOK_TOKEN": secrets["webhook"],
        "INCIDENT_API_TOKEN": secrets["api"],
        "INCIDENT_METRICS_TOKEN": secrets["metrics"],
        "INCIDENT_SLACK_BOT_TOKEN": secrets["slack"],
        "INCIDENT_SLACK_CHANNEL": slack.channel_id(CHANNEL),
        "INCIDENT_SLACK_API_URL": slack.url,
        "INCIDENT_PAGERDUTY_ROUTING_KEY": secrets["pagerduty"],
        "INCIDENT_PAGERDUTY_EVENTS_URL": pagerduty.url,
        "SSL_CERT_FILE": pagerduty.ca_path,
        "INCIDENT_RULES_FILE": str(rules),
        "INCIDENT_LOG_DIR": str(log_dir),
        "INCIDENT_LOG_LEVEL": "DEBUG",
        "INCIDENT_LOG_FORMAT": "json",
        "INCIDENT_ESCALATION_POLL_SECONDS": "1",
        "INCIDENT_BACKUP_DIR": str(tmp_path / "backups"),
        "INCIDENT_MAX_BODY_BYTES": str(1024 * 1024),
        "DEPLOYER_TOKEN": secrets["deployer"],
    }
    redis.Redis.from_url(redis_url).flushdb()
    processes: list[ChildProcess] = []
    try:
        # Flower first, so it sees every task event from the start.
        flower = FlowerProcess(env, output_dir / "flower.out")
        processes.append(flower)
        flower.wait_ready()
        worker = WorkerProcess(env, output_dir / "worker.out")
        processes.append(worker)
        beat = BeatProcess(env, output_dir / "beat.out")
        processes.append(beat)
        api = ApiProcess(env, output_dir / "api.out")
        processes.append(api)
        worker.wait_ready()
        beat.wait_ready()
        api.wait_ready()
        yield {
            "api": api, "flower": flower, "worker": worker, "beat": beat, "processes": processes,
            "slack": slack, "pagerduty": pagerduty, "target": target,
            "log_dir": log_dir, "output_dir": output_dir,
        }
    finally:
        for process in reversed(processes):
            process.stop()
        for fake in (slack, pagerduty, target):
            fake.stop()


def test_no_secret_appears_in_logs_flower_or_api_answers_of_a_full_run(run, secrets, redis_url):
    api, slack, pagerduty, target = run["api"], run["slack"], run["pagerduty"], run["target"]
    scan = Run(secrets, run["log_dir"], run["output_dir"])
    hook = {"Authorization": f"Bearer {secrets['webhook']}", "Content-Type": "application/json"}
    auth = {"Authorization": f"Bearer {secrets['api']}"}
    client = httpx.Client(base_url=api.url, timeout=30)

    def webhook(body: dict[str, Any], what: str) -> None:
        response = scan.keep(what, client.post("/webhooks/alertmanager", content=orjson.dumps(body),
                                               headers=hook))
        assert response.status_code == 202, response.text

    def incident(incident_id: int) -> dict[str, Any]:
        response = scan.keep(f"incident {incident_id}", client.get(f"/api/incidents/{incident_id}",
                                                                   headers=auth))
        if response.status_code == 404:  # not ingested yet
            return {"remediations": [], "timeline": [], "notifications": [], "status": None}
        assert response.status_code == 200, response.text
        return response.json()

    # A: SEV1. Slack answers its first request 500 (retried), PagerDuty refuses
    # the trigger with a 400 (failed for good); both remediations fail; beat
    # escalates it after ack_timeout.
    slack.fail_next(1, status=500)
    pagerduty.fail_next(1, status=400, error="Event object is invalid")
    sev1 = factories.alert(service="api", severity="critical", env="prod")
    webhook(factories.payload(sev1), "webhook A")

    def escalated_and_remediated(incident_id: int, remediations: int = 2):
        def done():
            shown = incident(incident_id)
            finished = [r for r in shown["remediations"] if r["status"] in ("succeeded", "failed")]
            return shown if len(finished) == remediations else None
        return done

    a = wait_for(escalated_and_remediated(1), timeout=WAIT, interval=0.5, what="A's remediations")
    wait_for(lambda: "escalated" in [e["kind"] for e in incident(1)["timeline"]], timeout=WAIT,
             interval=0.5, what="A escalated by beat")

    # B: SEV2. Slack refuses its parent outright (invalid_auth): failed, not retried.
    # Scripted once A is quiet, so that B's parent is the next thing sent to Slack.
    def quiet():
        shown = incident(1)
        pending = [n for n in shown["notifications"] if n["status"] == "pending"]
        return shown["notifications"] and not pending
    wait_for(quiet, timeout=WAIT, interval=0.5, what="A's notifications settled")
    slack.fail_next(1, status=200, error="invalid_auth")
    # A page, so its parent waits for a rate-limit token instead of joining a digest.
    sev2 = factories.alert(service="web", severity="critical", env="staging")
    webhook(factories.payload(sev2), "webhook B")
    wait_for(escalated_and_remediated(2), timeout=WAIT, interval=0.5, what="B's remediations")

    # By hand, then every kind of refusal and error the API gives.
    for path in ("/api/incidents/1/acknowledge", "/api/incidents/1/resolve",
                 "/api/incidents/1/resolve", "/api/incidents/999/resolve"):
        scan.keep(f"POST {path}", client.post(path, headers=auth, json={"note": "by the test"}))
    webhook(factories.payload(factories.alert("resolved", service="web", severity="critical",
                                              env="staging")),
            "webhook B resolved")
    refusals = [
        ("GET", "/api/incidents", {}, None),
        ("GET", "/api/incidents", {"Authorization": "Bearer wrong"}, None),
        ("GET", "/api/incidents", {"Authorization": f"Bearer {secrets['webhook']}"}, None),
        ("GET", "/api/incidents", {"Authorization": f"Basic {secrets['api']}"}, None),
        ("POST", "/webhooks/alertmanager", {"Authorization": f"Bearer {secrets['api']}",
                                            "Content-Type": "application/json"}, b"{}"),
        ("POST", "/webhooks/alertmanager", {**hook}, b"{not json"),
        ("POST", "/webhooks/alertmanager", {**hook, "Content-Type": "text/plain"}, b"{}"),
        ("POST", "/webhooks/alertmanager", {**hook}, b'{"version": "3"}'),
        ("POST", "/webhooks/alertmanager", {**hook}, b"[" + b"1," * (600 * 1024) + b"1]"),
        ("GET", "/api/incidents?limit=0", auth, None),
        ("GET", "/api/incidents?cursor=" + quote(secrets["api"], safe=""), auth, None),
        ("GET", "/api/incidents/0", auth, None),
        ("GET", "/api/incidents/999", auth, None),
        ("POST", "/api/incidents/1/acknowledge", auth, b"{not json"),
        ("POST", "/api/incidents/1/acknowledge", auth, b'{"unknown": 1}'),
        ("GET", "/metrics", {}, None),
        ("GET", "/metrics", {"Authorization": f"Bearer {secrets['api']}"}, None),
    ]
    for method, path, headers, body in refusals:
        response = client.request(method, path, headers=headers, content=body)
        scan.keep(f"{method} {path[:60]}", response)
        assert response.status_code >= 400, f"{method} {path}: {response.status_code}"
    for path, headers in (
        ("/api/incidents", auth), ("/api/incidents?limit=1", auth), ("/api/breakers", auth),
        ("/metrics", {"Authorization": f"Bearer {secrets['metrics']}"}), ("/healthz", {}),
        ("/readyz", {}), ("/openapi.json", {}), ("/docs", {}),
    ):
        response = scan.keep(f"GET {path}", client.get(path, headers=headers))
        assert response.status_code == 200, f"{path}: {response.status_code} {response.text[:300]}"
    listed = client.get("/api/incidents", headers=auth, params={"limit": 1}).json()
    scan.keep("page 2", client.get("/api/incidents", headers=auth,
                                   params={"limit": 1, "cursor": listed["next_cursor"]}))

    # Everything settles: no notification pending, nothing queued.
    def settled():
        shown = [incident(1), incident(2)]
        pending = [n for s in shown for n in s["notifications"] if n["status"] == "pending"]
        return shown if not pending and all(s["status"] == "resolved" for s in shown) else None

    a, b = wait_for(settled, timeout=WAIT, interval=0.5, what="every notification settled")
    client.close()

    # The run went through the paths it claims to.
    notifications = {(n["channel"], n["action"], n["status"]) for n in a["notifications"] + b["notifications"]}
    assert {("pagerduty", "trigger", "failed"), ("slack", "trigger", "sent"),
            ("slack", "trigger", "failed"), ("pagerduty", "escalate", "sent")} <= notifications, (
        sorted(notifications)
    )
    assert {r["status"] for r in a["remediations"] + b["remediations"]} == {"failed"}
    assert all(request.headers.get("x-deployer-key") == secrets["deployer"] for request in target.requests)
    assert target.requests, "the remediation target was never called"
    assert any(e["routing_key"] == secrets["pagerduty"] for e in pagerduty.events)

    # Flower: every task it saw, with arguments, results and errors; the workers it knows.
    flower = run["flower"]

    def flower_tasks():
        response = httpx.get(f"{flower.url}/api/tasks", auth=LOGIN, timeout=10)
        names = {t.get("name") for t in response.json().values()}
        wanted = {"incident.incidents.ingest_webhook", "incident.notifications.deliver",
                  "incident.remediation.run", "incident.notifications.fire_escalations"}
        return response if wanted <= names else None

    scan.keep("flower tasks", wait_for(flower_tasks, timeout=WAIT, interval=1, what="tasks in Flower"))
    for path in ("/api/workers?refresh=1", "/api/task/types", "/tasks", "/workers"):
        response = httpx.get(f"{flower.url}{path}", auth=LOGIN, timeout=30)
        scan.keep(f"flower {path}", response)
    # What went out to Slack's channel, PagerDuty's event and the remediation
    # target's body: readers there must not see a secret either (the routing key
    # and the deployer header are the ones each service is meant to get).
    for message in slack.messages:
        scan.answers.append((f"slack message {message.ts}", json.dumps(
            [message.text, message.blocks, message.metadata])))
    for event in pagerduty.events:
        scan.answers.append(("pagerduty event", json.dumps(
            {k: v for k, v in event.items() if k != "routing_key"})))
    for request in target.requests:
        scan.answers.append((f"remediation request {request.method}", json.dumps(request.body)))
    # Broker contents too: task messages still held (retries, schedules) carry arguments.
    scan.answers.append(("broker contents", _dump_redis(redis.Redis.from_url(redis_url))))

    for process in run["processes"]:
        process.stop()  # flushes and closes every log before it is read

    # The scan reads what it should: the log files exist, at DEBUG, and hold the run.
    logs = {path.name for path in run["log_dir"].iterdir()}
    assert {"api.log", "worker.log", "beat.log"} <= logs, logs
    worker_log = (run["log_dir"] / "worker.log").read_text()
    assert '"level": "debug"' in worker_log
    assert "notification failed" in worker_log and "remediation failed" in worker_log
    assert "/webhooks/alertmanager" in (run["log_dir"] / "api.log").read_text()
    texts = dict(scan.texts())
    assert any("incident.notifications.deliver" in text for where, text in texts.items()
               if where.startswith("flower tasks"))

    leaks = scan.leaks()
    assert not leaks, "secrets leaked:\n" + "\n\n".join(leaks[:20])


def _dump_redis(client: redis.Redis) -> str:
    lines = []
    for key in client.scan_iter(count=500):
        kind = client.type(key).decode()
        if kind == "string":
            value: Any = client.get(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "set":
            value = client.smembers(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        else:
            value = kind
        lines.append(f"{key!r}: {value!r}")
    return "\n".join(lines)
