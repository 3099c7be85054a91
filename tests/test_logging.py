"""Logging: one scrubbed pipeline for structlog and stdlib lines, on stderr and in files.

Each test runs a short script, or a real `incident worker` / `incident beat`,
in a fresh interpreter, because logging configuration is process-global and
Celery and uvicorn change it too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import ChildProcess, WorkerProcess, wait_for

PROJECT_ROOT = Path(__file__).resolve().parents[1]

WEBHOOK_TOKEN = "whk-4f9a0c1e77"
SLACK_BOT_TOKEN = "xoxb-1111-2222-slacksecret"
DB_PASSWORD_ENCODED = "db-p%40ss-7781"
DB_PASSWORD = "db-p@ss-7781"
BROKER_PASSWORD = "brk-pass-5523"
SECRET_ENV = {
    "INCIDENT_WEBHOOK_TOKEN": WEBHOOK_TOKEN,
    "INCIDENT_SLACK_BOT_TOKEN": SLACK_BOT_TOKEN,
    "INCIDENT_DATABASE_URL": f"postgresql://incident:{DB_PASSWORD_ENCODED}@db:5432/incident",
    "INCIDENT_BROKER_URL": f"redis://:{BROKER_PASSWORD}@redis:6379/0",
}

PRELUDE = """\
import json, logging, os, sys
import structlog
from structlog.contextvars import bind_contextvars, clear_contextvars
from incident.config import get_settings
from incident.logging import (
    configure_logging, get_logger, install_celery_logging, uvicorn_log_config,
)
"""


class Run:
    def __init__(self, proc: subprocess.CompletedProcess[str], log_dir: Path) -> None:
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.log_dir = log_dir

    def stderr_records(self) -> list[dict]:
        """Every stderr line, parsed: a line that is not JSON fails the test."""
        return [json.loads(line) for line in self.stderr.splitlines() if line.strip()]

    def file_text(self, name: str) -> str:
        return (self.log_dir / name).read_text(encoding="utf-8")

    def file_records(self, name: str) -> list[dict]:
        return [json.loads(line) for line in self.file_text(name).splitlines() if line.strip()]


def run_script(script: str, tmp_path: Path, **env: str) -> Run:
    log_dir = tmp_path / "logs"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("INCIDENT_")}
    environ.update(
        PYTHONPATH=str(PROJECT_ROOT),
        INCIDENT_LOG_DIR=str(log_dir),
        INCIDENT_LOG_FORMAT="json",
        INCIDENT_LOG_LEVEL="INFO",
    )
    environ.update(env)
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(script)],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return Run(proc, log_dir)


def by_event(records: list[dict]) -> dict[str, dict]:
    return {r["event"]: r for r in records}


def test_json_lines_carry_bound_context_for_structlog_and_stdlib_loggers(tmp_path):
    run = run_script(
        """
        configure_logging(get_settings(), process="api")
        bind_contextvars(group_key="am/{}:{alertname=x}", incident_id=42, task_id="t-1")
        get_logger("incident.incidents").info("incident opened", severity="SEV1")
        logging.getLogger("celery.worker").warning("worker %s lost", "w1")
        logging.getLogger("httpx").info("HTTP Request: GET https://example.test")
        logging.getLogger("httpx").warning("httpx gave up")
        get_logger("incident.incidents").debug("below the configured level")
        clear_contextvars()
        get_logger().info("nothing bound")
        """,
        tmp_path,
    )
    records = run.stderr_records()
    assert [r["event"] for r in records] == [
        "incident opened",
        "worker w1 lost",
        "httpx gave up",
        "nothing bound",
    ]
    ours, celery, _, unbound = records
    for record in (ours, celery):
        assert record["group_key"] == "am/{}:{alertname=x}"
        assert record["incident_id"] == 42
        assert record["task_id"] == "t-1"
        stamp = datetime.fromisoformat(record["timestamp"])
        assert stamp.utcoffset() == timedelta(0)
    assert ours["level"] == "info"
    assert ours["logger"] == "incident.incidents"
    assert ours["severity"] == "SEV1"
    assert celery["level"] == "warning"
    assert celery["logger"] == "celery.worker"
    assert unbound["logger"] == "__main__"
    assert "group_key" not in unbound and "task_id" not in unbound

    assert run.file_records("api.log") == records


def test_configured_secrets_never_reach_stderr_or_the_log_file(tmp_path):
    run = run_script(
        """
        configure_logging(get_settings(), process="worker")
        webhook = os.environ["INCIDENT_WEBHOOK_TOKEN"]
        slack = os.environ["INCIDENT_SLACK_BOT_TOKEN"]
        db_url = os.environ["INCIDENT_DATABASE_URL"]
        broker_url = os.environ["INCIDENT_BROKER_URL"]
        log = get_logger("incident.test")

        class Client:
            def __repr__(self):
                return f"Client(token={slack!r})"

        log.info(f"message holds {webhook}")
        log.info("kwarg holds", token=slack, client=Client())
        log.info("positional holds %s", slack)
        log.info(
            "nested holds",
            request={"headers": {"Authorization": f"Bearer {webhook}"}},
            attempts=[{"url": db_url}, ("decoded", "db-p@ss-7781")],
        )
        logging.getLogger("kombu.connection").error("Cannot connect to %s", broker_url)
        logging.getLogger("uvicorn.error").info("extra holds", extra={"cfg": {"t": webhook}})
        log.info("unconfigured bearer", header="Authorization: Bearer unlisted-tok-123")
        logging.getLogger("amqp").warning("dial amqp://guest:unlisted-pw-9@rabbit//")
        try:
            raise RuntimeError(f"connect to {db_url} failed with {slack}")
        except RuntimeError:
            log.exception("structlog traceback")
            logging.getLogger("celery.app.trace").error("stdlib traceback", exc_info=True)
        """,
        tmp_path,
        **SECRET_ENV,
    )
    leaked = [
        WEBHOOK_TOKEN,
        SLACK_BOT_TOKEN,
        DB_PASSWORD,
        DB_PASSWORD_ENCODED,
        BROKER_PASSWORD,
        "unlisted-tok-123",
        "unlisted-pw-9",
    ]
    file_text = run.file_text("worker.log")
    for secret in leaked:
        assert secret not in run.stderr, secret
        assert secret not in file_text, secret

    # The lines are still there, with the secrets replaced.
    events = by_event(run.stderr_records())
    assert "message holds ***" in events
    assert events["kwarg holds"]["token"] == "***"
    assert events["kwarg holds"]["client"] == "Client(token='***')"
    assert "positional holds ***" in events
    nested = events["nested holds"]
    assert nested["request"] == {"headers": {"Authorization": "Bearer ***"}}
    assert nested["attempts"] == [
        {"url": "postgresql://incident:***@db:5432/incident"},
        ["decoded", "***"],
    ]
    assert "Cannot connect to redis://:***@redis:6379/0" in events
    assert events["extra holds"]["cfg"] == {"t": "***"}
    assert events["unconfigured bearer"]["header"] == "Authorization: Bearer ***"
    assert "dial amqp://guest:***@rabbit//" in events
    for name in ("structlog traceback", "stdlib traceback"):
        exception = events[name]["exception"]
        assert exception.startswith("Traceback (most recent call last)")
        assert "RuntimeError: connect to postgresql://incident:***@db" in exception
        assert "failed with ***" in exception
    assert by_event(run.file_records("worker.log")) == events


def test_file_handler_reopens_the_log_after_rotation_renames_it(tmp_path):
    run = run_script(
        """
        configure_logging(get_settings(), process="worker")
        log_dir = get_settings().log_dir
        get_logger("incident.test").info("before rotation")
        os.rename(log_dir / "worker.log", log_dir / "worker.log.1")
        get_logger("incident.test").info("after rotation")
        """,
        tmp_path,
    )
    assert [r["event"] for r in run.file_records("worker.log.1")] == ["before rotation"]
    assert [r["event"] for r in run.file_records("worker.log")] == ["after rotation"]


def test_log_files_are_created_0640_and_an_older_wider_one_is_narrowed(tmp_path):
    run = run_script(
        """
        import stat
        os.umask(0o022)
        log_dir = get_settings().log_dir
        log_dir.mkdir()
        (log_dir / "beat.log").write_text("")  # as an older version left it: 0644
        for process in ("worker", "beat"):
            configure_logging(get_settings(), process=process)
            get_logger("incident.test").info("line", process=process)
        print(sorted((p.name, oct(stat.S_IMODE(p.stat().st_mode))) for p in log_dir.iterdir()))
        """,
        tmp_path,
    )
    assert run.stdout.strip() == "[('beat.log', '0o640'), ('worker.log', '0o640')]"
    assert [r["process"] for r in run.file_records("beat.log")] == ["beat"]


def test_configuring_twice_installs_one_set_of_handlers(tmp_path):
    run = run_script(
        """
        configure_logging(get_settings(), process="cli")
        configure_logging(get_settings(), process="cli")
        get_logger("incident.test").info("once")
        logging.getLogger("kombu").warning("once from stdlib")
        """,
        tmp_path,
    )
    assert [r["event"] for r in run.stderr_records()] == ["once", "once from stdlib"]
    assert [r["event"] for r in run.file_records("cli.log")] == ["once", "once from stdlib"]


def test_console_format_renders_plain_text_and_still_scrubs(tmp_path):
    run = run_script(
        """
        configure_logging(get_settings(), process="dev")
        bind_contextvars(group_key="grp-1")
        get_logger("incident.test").info("incident opened", severity="SEV2")
        logging.getLogger("celery.worker").warning("worker lost")
        try:
            raise ValueError("token " + os.environ["INCIDENT_WEBHOOK_TOKEN"])
        except ValueError:
            get_logger("incident.test").exception("remediation crashed")
        """,
        tmp_path,
        INCIDENT_LOG_FORMAT="console",
        **SECRET_ENV,
    )
    lines = run.stderr.splitlines()
    opened = next(line for line in lines if "incident opened" in line)
    assert not opened.startswith("{")
    assert "[info" in opened
    assert "severity=SEV2" in opened and "group_key=grp-1" in opened
    assert "[incident.test]" in opened
    lost = next(line for line in lines if "worker lost" in line)
    assert "[warning" in lost and "[celery.worker]" in lost and "group_key=grp-1" in lost
    assert "Traceback (most recent call last)" in run.stderr
    assert "ValueError: token ***" in run.stderr
    assert WEBHOOK_TOKEN not in run.stderr
    assert "\x1b[" not in run.stderr  # stderr is a pipe: no colours
    # The file stays JSON whatever stderr shows.
    assert [r["event"] for r in run.file_records("dev.log")] == [
        "incident opened",
        "worker lost",
        "remediation crashed",
    ]


def test_uvicorn_lines_go_through_the_pipeline(tmp_path):
    run = run_script(
        """
        import threading, time, urllib.request
        import uvicorn
        configure_logging(get_settings(), process="api")

        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, lifespan="off", log_config=uvicorn_log_config()
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        urllib.request.urlopen(f"http://127.0.0.1:{port}/probe?x=1").close()
        server.should_exit = True
        thread.join(20)
        names = ("uvicorn", "uvicorn.error", "uvicorn.access")
        print(json.dumps({n: len(logging.getLogger(n).handlers) for n in names}))
        """,
        tmp_path,
    )
    assert json.loads(run.stdout) == {"uvicorn": 0, "uvicorn.error": 0, "uvicorn.access": 0}
    records = run.stderr_records()
    access = [r for r in records if r["logger"] == "uvicorn.access"]
    assert len(access) == 1
    assert '"GET /probe?x=1 HTTP/1.1" 204' in access[0]["event"]
    assert any(
        r["logger"] == "uvicorn.error" and "Uvicorn running on" in r["event"] for r in records
    )
    assert all("color_message" not in r for r in records)
    assert run.file_records("api.log") == records


def test_celery_keeps_our_handlers_and_binds_the_running_task(tmp_path):
    run = run_script(
        """
        from celery import Celery
        from celery.utils.log import get_task_logger

        app = Celery("probe")
        install_celery_logging(app, process="worker")
        # What a worker does at start-up; logging was not configured before.
        app.log.setup(loglevel="WARNING")

        @app.task(name="incident.test.probe")
        def probe():
            get_logger("incident.test").info("inside task")
            get_task_logger("incident.test.probe").warning("stdlib inside task")
            bind_contextvars(group_key="set-by-task")

        bind_contextvars(incident_id=7)
        probe.apply(task_id="task-123")
        get_logger("incident.test").info("after task")
        print(json.dumps({"hijack": app.conf.worker_hijack_root_logger}))
        """,
        tmp_path,
    )
    assert json.loads(run.stdout) == {"hijack": False}
    records = run.stderr_records()
    ours = [r for r in records if r["logger"].startswith("incident.")]
    assert [r["event"] for r in ours] == ["inside task", "stdlib inside task", "after task"]
    inside, stdlib_inside, after = ours
    for record in (inside, stdlib_inside):
        assert record["task_id"] == "task-123"
        assert record["task"] == "incident.test.probe"
        assert record["incident_id"] == 7
    assert after["incident_id"] == 7
    assert "task_id" not in after and "task" not in after
    assert "group_key" not in after
    # Celery's --loglevel WARNING does not silence the configured INFO.
    assert inside["level"] == "info"
    assert run.file_records("worker.log") == records


def json_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def events(path: Path) -> list[str]:
    return [r["event"] for r in json_lines(path)]


@pytest.mark.timeout(120)
def test_worker_and_its_pool_children_append_to_worker_log_and_follow_a_rotation(
    incident_environment, clean_state, tmp_path
):
    from incident.worker import app

    log_dir = tmp_path / "logs"
    live, rotated = log_dir / "worker.log", log_dir / "worker.log.1"
    env = {**incident_environment, "INCIDENT_LOG_DIR": str(log_dir)}
    worker = WorkerProcess(env, tmp_path / "worker.out")
    task = "incident.notifications.sweep_undelivered"

    def finished(path: Path, task_id: str) -> bool:
        return any(f"[{task_id}] succeeded" in event for event in events(path))

    try:
        worker.wait_ready()
        nodes = {node.pid for node in worker.node_processes()}
        first = app.send_task(task).id
        wait_for(lambda: finished(live, first), what="the first task in worker.log")
        os.rename(live, rotated)
        second = app.send_task(task).id
        wait_for(lambda: finished(live, second), what="the second task in a new worker.log")
    finally:
        worker.stop()

    def pids(path: Path, task_id: str) -> dict[str, int]:
        return {
            ("received" if r["event"].endswith("received") else "succeeded"): r["pid"]
            for r in json_lines(path)
            if f"[{task_id}]" in r["event"]
        }

    assert any(e.endswith(" ready.") for e in events(rotated))
    for path, task_id in ((rotated, first), (live, second)):
        ran = pids(path, task_id)
        # A node's main process receives a task; a prefork pool child runs it.
        assert ran["received"] in nodes
        assert ran["succeeded"] not in nodes | {worker.proc.pid}
    assert pids(live, first) == {} and pids(rotated, second) == {}


@pytest.mark.timeout(120)
def test_beat_writes_beat_log_and_follows_a_rotation(incident_environment, redis_client, tmp_path):
    log_dir = tmp_path / "logs"
    live, rotated = log_dir / "beat.log", log_dir / "beat.log.1"
    env = {
        **incident_environment,
        "INCIDENT_LOG_DIR": str(log_dir),
        "INCIDENT_ESCALATION_POLL_SECONDS": "0.5",
    }
    beat = ChildProcess(
        [sys.executable, "-m", "incident", "beat", "--schedule", str(tmp_path / "schedule")],
        tmp_path / "beat.out",
        env,
    )
    beat.name = "beat"

    def sent_a_task(path: Path) -> bool:
        beat.check_alive()
        return any(e.startswith("Scheduler: Sending due task") for e in events(path))

    try:
        wait_for(lambda: sent_a_task(live), timeout=60, what="beat to send a task")
        os.rename(live, rotated)
        wait_for(lambda: sent_a_task(live), what="beat to write a new beat.log")
    finally:
        beat.stop()
        # No worker runs here to drain what beat sent.
        redis_client.flushdb()

    assert "beat: Starting..." in events(rotated)
    assert {r["pid"] for r in json_lines(rotated) + json_lines(live)} == {beat.proc.pid}


def test_scrubbing_a_long_hostile_value_takes_linear_time():
    """Label values of up to 16 KiB each reach log lines, several to a line; shapes
    that made the URL pattern backtrack quadratically (0.3–1.3 s for 16 KiB,
    about 5 s for 64 KiB) must cost milliseconds."""
    import time

    from incident.logging import SecretScrubber

    scrubber = SecretScrubber(["s3cret-token"])
    for hostile in ("a-" * 32768, "x://y:" * 10922, "a://" + "b" * 65532):
        started = time.perf_counter()
        scrubber.scrub(hostile)
        assert time.perf_counter() - started < 0.5, hostile[:20]
    assert scrubber.scrub("postgres://u:pw@h/db") == "postgres://u:***@h/db"
