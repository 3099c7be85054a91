"""`incident dev`: one command, the whole pipeline, a sample that works, and a clean Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from incident.embedded import free_port
from tests.conftest import wait_for


@pytest.fixture
def state_dir():
    path = Path(tempfile.mkdtemp(prefix="incident-test-dev-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _sample_commands(output: str) -> tuple[str, str]:
    """The two curl commands `incident dev` prints, as a shell would read them."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if "curl -sS -X POST" in line)
    post = lines[start].rstrip("\\") + lines[start + 1]
    listing = next(line for line in lines[start + 2:] if "curl" in line)
    return post.strip(), listing.strip()


def _processes_using(path: Path) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if p.info["status"] != psutil.STATUS_ZOMBIE and str(path) in " ".join(p.info["cmdline"] or ()):
            found.append(p)
    return found


@pytest.mark.timeout(240)
def test_dev_runs_the_pipeline_and_stops_every_child_on_ctrl_c(state_dir):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INCIDENT_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "incident", "dev", "--state-dir", str(state_dir), "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    output: list[str] = []
    try:
        def printed_ready() -> bool:
            line = proc.stdout.readline()
            output.append(line)
            if proc.poll() is not None and not line:
                raise AssertionError("incident dev exited:\n" + "".join(output))
            return "Press Ctrl-C to stop." in line

        wait_for(printed_ready, timeout=180, interval=0, what="incident dev ready")
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 3  # api, worker, beat (and their own children)

        post, listing = _sample_commands("".join(output))
        sent = subprocess.run(["bash", "-c", post], capture_output=True, text=True, timeout=30)
        assert json.loads(sent.stdout) == {"status": "accepted", "alerts": 1}, sent.stderr

        def incident_listed() -> list:
            done = subprocess.run(["bash", "-c", listing], capture_output=True, text=True, timeout=30)
            return json.loads(done.stdout)["items"]

        [incident] = wait_for(incident_listed, timeout=60, interval=0.5, what="sample incident")
        assert incident["status"] == "triggered"
        assert incident["title"].startswith("HighErrorRate")

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        deadline = time.monotonic() + 10
        while any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children):
            assert time.monotonic() < deadline, "children still running after Ctrl-C"
            time.sleep(0.1)
        # The embedded PostgreSQL is daemonised, not a child: find it by its data directory.
        wait_for(lambda: not _processes_using(state_dir), timeout=15, what="embedded servers stopped")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _run_dev(state_dir: Path, env: dict[str, str], *args: str) -> tuple[int, str]:
    """`incident dev` expected to stop by itself at once; one that starts up instead fails."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "incident", "dev", "--state-dir", str(state_dir),
         "--port", str(free_port()), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
        raise AssertionError("incident dev started instead of stopping:\n" + output) from None
    return proc.returncode, output


def _dev_env(incident_environment: dict[str, str], **overrides: str) -> dict[str, str]:
    # The test run's database and broker, so that nothing embedded is started.
    env = {k: v for k, v in os.environ.items() if not k.startswith("INCIDENT_")}
    env["INCIDENT_DATABASE_URL"] = incident_environment["INCIDENT_DATABASE_URL"]
    env["INCIDENT_BROKER_URL"] = incident_environment["INCIDENT_BROKER_URL"]
    env.update(overrides)
    return env


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("host", "tokens", "missing"),
    [
        ("0.0.0.0", {}, ["INCIDENT_WEBHOOK_TOKEN", "INCIDENT_API_TOKEN"]),
        ("::", {"INCIDENT_WEBHOOK_TOKEN": "w-4d1e"}, ["INCIDENT_API_TOKEN"]),
        ("0.0.0.0", {"INCIDENT_API_TOKEN": "a-77f0", "INCIDENT_WEBHOOK_TOKEN": "  "},
         ["INCIDENT_WEBHOOK_TOKEN"]),
    ],
)
def test_dev_refuses_a_network_address_without_both_tokens(
    state_dir, incident_environment, host, tokens, missing
):
    env = _dev_env(incident_environment, **tokens)
    code, output = _run_dev(state_dir, env, "--host", host)
    assert code == 1, output
    assert "INCIDENT_WEBHOOK_TOKEN and INCIDENT_API_TOKEN" in output
    assert f"({' and '.join(missing)} not set)" in output
    assert "running migrations" not in output  # refused before anything started


@pytest.mark.parametrize(
    ("host", "tokens"),
    [("127.0.0.1", {}), ("::1", {}), ("localhost", {}),
     ("0.0.0.0", {"INCIDENT_WEBHOOK_TOKEN": "w", "INCIDENT_API_TOKEN": "a"})],
)
def test_dev_listens_on_loopback_freely_and_elsewhere_with_both_tokens(host, tokens):
    from incident.dev import check_exposure

    check_exposure(host, tokens)  # does not raise


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://incident:Pw-Distinct-93f1c@127.0.0.1:{port}/incident",
        "postgresql+psycopg://incident@127.0.0.1:{port}/incident?password=Pw-Distinct-93f1c",
    ],
)
def test_a_failed_migration_never_prints_the_database_password(
    state_dir, incident_environment, url
):
    port = free_port()  # nothing listens there
    env = _dev_env(incident_environment, INCIDENT_DATABASE_URL=url.format(port=port))
    code, output = _run_dev(state_dir, env)
    assert code == 1, output
    assert "`incident migrate` exited" in output
    assert f"127.0.0.1:{port}/incident" in output  # still says which database
    assert "Pw-Distinct-93f1c" not in output
