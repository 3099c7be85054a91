"""`incident worker` without queue flags: a node on every queue, a node reserved for `page`,
and one command that starts, stops and answers for both."""

from __future__ import annotations

import os
import shutil
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from incident.cli.worker import (
    MAIN_NODE_NICENESS,
    RESERVED_CONCURRENCY,
    WorkerUsageError,
    chooses_queues,
    node_commands,
    reserved_node_name,
)
from incident.queues import QUEUES
from tests import factories
from tests.conftest import ApiProcess, WorkerProcess, notifiers_env, wait_for
from tests.fakes.pagerduty import FakePagerDuty
from tests.fakes.slack import FakeSlack
from tests.notifications.support import post

# --- the command lines ---------------------------------------------------------------------


def test_without_flags_it_runs_a_node_on_every_queue_and_one_reserved_for_page():
    commands = node_commands([], executable="python")
    assert commands == {
        "celery@%h": ["python", "-m", "incident", "worker", "--queues", ",".join(QUEUES)],
        "page@%h": [
            "python", "-m", "incident", "worker", "--queues", "page",
            "--concurrency", str(RESERVED_CONCURRENCY), "--prefetch-multiplier", "1",
            "--hostname", "page@%h",
        ],
    }  # fmt: skip


def test_the_user_s_options_reach_both_nodes_but_the_reserved_one_keeps_its_size_and_name():
    args = [
        "--concurrency", "8", "--loglevel", "INFO", "--autoscale", "10,3",
        "--pidfile=/run/w.pid", "-S", "/var/lib/state", "-n", "edge@box", "--without-gossip",
    ]  # fmt: skip
    main, page = node_commands(args, executable="python").items()
    assert main == ("edge@box", ["python", "-m", "incident", "worker", "--queues", ",".join(QUEUES),
                                 *args])
    name, argv = page
    assert name == "edge-page@box"
    assert argv[4:] == [
        "--concurrency", "8", "--loglevel", "INFO", "-n", "edge@box", "--without-gossip",
        # Last: Celery takes an option's last value.
        "--queues", "page", "--concurrency", "1", "--prefetch-multiplier", "1",
        "--hostname", "edge-page@box",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("main", "page"),
    [("celery@%h", "page@%h"), ("w1@%h", "w1-page@%h"), ("box", "page@box"),
     ("a@b@c", "a@b-page@c")],
)
def test_the_reserved_node_is_named_after_the_main_one(main, page):
    assert reserved_node_name(main) == page


@pytest.mark.parametrize(
    ("args", "chosen"),
    [
        (["-Q", "ingest"], True), (["--queues", "page"], True), (["--queues=page"], True),
        (["-Qpage"], True), (["-X", "remediate"], True), (["--exclude-queues=maintenance"], True),
        (["--loglevel", "INFO", "--concurrency", "4"], False), ([], False),
    ],
)  # fmt: skip
def test_queue_flags_mean_the_user_chose_one_node(args, chosen):
    assert chooses_queues(args) is chosen


@pytest.mark.parametrize("flag", ["--detach", "-D"])
def test_detach_is_refused_with_what_to_do_instead(flag):
    with pytest.raises(WorkerUsageError, match="process manager, or pass -Q"):
        node_commands([flag])


# --- the processes --------------------------------------------------------------------------


def _tree(worker: WorkerProcess) -> list[psutil.Process]:
    return psutil.Process(worker.proc.pid).children(recursive=True)


def _gone(processes: list[psutil.Process], timeout: float = 60) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return alive


@pytest.fixture
def default_worker(incident_environment, tmp_path) -> Iterator[WorkerProcess]:
    redis.Redis.from_url(incident_environment["INCIDENT_BROKER_URL"]).flushdb()
    worker = WorkerProcess(incident_environment, tmp_path / "worker.log")
    left: list[psutil.Process] = []
    try:
        worker.wait_ready()
        left = _tree(worker)
        yield worker
    finally:
        worker.stop()
        for process in _gone(left, timeout=10):
            process.kill()


def test_the_main_node_and_its_pool_run_nicer_than_the_page_node(default_worker):
    main, page = default_worker.node_processes()
    assert "--queues page" in " ".join(page.cmdline())
    base = psutil.Process(default_worker.proc.pid).nice()
    assert page.nice() == base
    assert main.nice() == base + MAIN_NODE_NICENESS
    assert {p.nice() for p in main.children()} == {base + MAIN_NODE_NICENESS}
    assert {p.nice() for p in page.children()} == {base}


def test_sigterm_to_the_command_stops_both_nodes_warmly_with_exit_code_0(default_worker):
    nodes = default_worker.node_processes()
    assert len(nodes) == 2
    everything = _tree(default_worker)
    os.kill(default_worker.proc.pid, signal.SIGTERM)  # the command only: it must pass it on
    assert default_worker.proc.wait(timeout=60) == 0
    assert _gone(everything) == []
    assert default_worker.log().count("Warm shutdown (MainProcess)") == 2


def test_killing_the_command_outright_leaves_no_orphans(default_worker):
    everything = _tree(default_worker)
    assert len(everything) >= 4  # two nodes, and a pool process or more each
    os.kill(default_worker.proc.pid, signal.SIGKILL)
    default_worker.proc.wait(timeout=10)
    assert _gone(everything) == []


def test_a_node_that_dies_takes_the_other_down_and_gives_the_exit_code(default_worker):
    everything = _tree(default_worker)
    page_node = next(
        p for p in default_worker.node_processes() if "--queues page" in " ".join(p.cmdline())
    )
    page_node.kill()
    assert default_worker.proc.wait(timeout=60) == 128 + signal.SIGKILL
    assert _gone(everything) == []
    assert "worker node ended; stopping the others" in default_worker.log()


# --- a page while the main pool is busy ------------------------------------------------------

SLOW_SECONDS = 90
CHANNEL = "reserved-page"


@pytest.fixture
def pagerduty() -> Iterator[FakePagerDuty]:
    with FakePagerDuty() as fake:
        yield fake


@pytest.fixture
def busy_env(incident_environment, pagerduty, tmp_path) -> Iterator[dict[str, str]]:
    """Slack and PagerDuty faked; SlowFix incidents run a remediation that takes a while."""
    rules = tmp_path / "rules.yml"
    rules.write_text(f"""
remediations:
  - name: slow-fix
    matchers: ['alertname="SlowFix"']
    action: command
    with:
      argv: ["{shutil.which("sleep")}", "{SLOW_SECONDS}"]
      timeout: {SLOW_SECONDS + 30}s
""")
    with FakeSlack(channels=(CHANNEL,)) as slack:
        yield {
            **incident_environment,
            **notifiers_env(slack, pagerduty, CHANNEL),
            "INCIDENT_RULES_FILE": str(rules),
        }


def _task_totals(node_prefix: str) -> dict[str, int]:
    from incident.worker import app

    node = f"{node_prefix}{socket.gethostname()}"
    stats = app.control.inspect(destination=[node], timeout=5).stats() or {}
    return dict(stats.get(node, {}).get("total", {}))


def test_a_page_runs_on_the_reserved_node_while_the_main_pool_is_occupied(
    busy_env, pagerduty, clean_state, tmp_path: Path
):
    env = busy_env
    worker = WorkerProcess(env, tmp_path / "worker.log", concurrency=2)
    api = ApiProcess(env, tmp_path / "api.log")
    sleeps: list[psutil.Process] = []
    try:
        worker.wait_ready()
        api.wait_ready()
        main_node, page_node = worker.nodes
        # Two SEV3 incidents whose remediation holds a main pool process each.
        for n in (1, 2):
            post(api, factories.payload(factories.alert(
                alertname="SlowFix", service=f"slow-{n}", severity="warning")))

        def both_main_processes_busy() -> list[psutil.Process]:
            found = [p for p in psutil.Process(worker.proc.pid).children(recursive=True)
                     if p.name() == "sleep"]
            return found if len(found) == 2 else []

        sleeps = wait_for(both_main_processes_busy, timeout=60, what="two slow remediations")
        # A SEV1 now: the main node has no free process for SLOW_SECONDS.
        post(api, factories.payload(factories.alert(service="checkout", severity="critical",
                                                    env="prod")))
        wait_for(lambda: pagerduty.events, timeout=SLOW_SECONDS / 2, what="the PagerDuty trigger")
        [event] = pagerduty.events
        assert event["event_action"] == "trigger"
        assert "checkout" in event["payload"]["summary"]
        assert all(p.is_running() for p in sleeps), "the main pool was freed before the page"
        # The reserved node ingested the SEV1 webhook and delivered its page; the main one neither.
        page_totals = _task_totals(page_node)
        assert page_totals.get("incident.incidents.ingest_webhook") == 1
        assert page_totals.get("incident.notifications.deliver", 0) >= 1
        main_totals = _task_totals(main_node)
        assert main_totals.get("incident.incidents.ingest_webhook") == 2
        assert main_totals.get("incident.remediation.run") == 2
    finally:
        for process in sleeps:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        api.stop()
        worker.stop()
