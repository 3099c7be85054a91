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
