"""The command action: argv without a shell, a clean environment, and timeouts that end the
whole process group."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from incident.remediation.actions import ActionOutcome, perform
from incident.remediation.command_action import KILL_GRACE, PASSED_THROUGH
from tests.remediation.rule_builders import make_context, make_rule

RECORDER = """\
import json, os, sys
with open(sys.argv[1], "w") as record:
    json.dump({"argv": sys.argv[2:], "env": dict(os.environ), "cwd": os.getcwd()}, record)
"""


@pytest.fixture
def recorder(tmp_path: Path) -> list[str]:
    """argv that writes its own further arguments, environment and cwd to record.json."""
    script = tmp_path / "record.py"
    script.write_text(RECORDER)
    return [sys.executable, str(script), str(tmp_path / "record.json")]


def recorded(tmp_path: Path) -> dict[str, Any]:
    return json.loads((tmp_path / "record.json").read_text())


def run(argv: list[str], labels: dict[str, str] | None = None, **settings: Any) -> ActionOutcome:
    rule = make_rule("command", name="scale-api", argv=argv, **settings)
    return perform(rule, make_context(rule, labels))


def gone(pid: int, within: float = 2.0) -> bool:
    """The process is dead within a moment: SIGKILL is delivered asynchronously.

    With no init reaping orphans, a killed child may linger as a zombie.
    """
    ends = time.monotonic() + within
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= ends:
            return False
        time.sleep(0.02)


class TestRunning:
    def test_each_element_is_one_rendered_argument(
        self, recorder: list[str], tmp_path: Path
    ) -> None:
        outcome = run(
            [*recorder, "deploy/{labels.service}", "--replicas=4", "{incident.title}"],
            {"service": "api gateway"},
        )
        assert outcome == ActionOutcome(succeeded=True)
        assert recorded(tmp_path)["argv"] == [
            "deploy/api gateway",
            "--replicas=4",
            "HighErrorRate api",
        ]

    def test_the_workers_secrets_are_not_passed_on(
        self, recorder: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("INCIDENT_SLACK_BOT_TOKEN", "xoxb-secret")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
        monkeypatch.setenv("TZ", "Europe/Paris")
        assert run(recorder).succeeded
        env = recorded(tmp_path)["env"]
        assert "xoxb-secret" not in json.dumps(env) and "aws-secret" not in json.dumps(env)
        assert env["TZ"] == "Europe/Paris"
        incident_variables = {
            "INCIDENT_REMEDIATION": "scale-api",
            "INCIDENT_KEY": "4f0c2a",
            "INCIDENT_ID": "42",
            "INCIDENT_SEVERITY": "SEV2",
            "INCIDENT_TITLE": "HighErrorRate api",
            "INCIDENT_URL": "http://incident.example/incidents/42",
            "INCIDENT_LABELS": '{"alertname": "HighErrorRate", "service": "api"}',
        }
        assert {name: env[name] for name in incident_variables} == incident_variables
        # LC_CTYPE: Python may set it in the child itself when the locale is C.
        allowed = {*PASSED_THROUGH, *incident_variables, "LC_CTYPE"}
        assert set(env) <= allowed

    def test_the_rules_env_with_labels_verbatim_and_worker_variables(
        self, recorder: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("KUBE_TOKEN", "k8s-token")
        env = {"TOKEN": "{env.KUBE_TOKEN}", "SERVICE": "{labels.service}", "PATH": "/usr/bin:/bin"}
        assert run(recorder, {"service": "a b;$(c)"}, env=env).succeeded
        child = recorded(tmp_path)["env"]
        assert (child["TOKEN"], child["SERVICE"], child["PATH"]) == (
            "k8s-token",
            "a b;$(c)",
            "/usr/bin:/bin",
        )

    def test_cwd(self, recorder: list[str], tmp_path: Path) -> None:
        (tmp_path / "work").mkdir()
        assert run(recorder, cwd=str(tmp_path / "work")).succeeded
        assert recorded(tmp_path)["cwd"] == str(tmp_path / "work")

    def test_a_missing_cwd_is_refused(self, tmp_path: Path) -> None:
        outcome = run(["true"], cwd=str(tmp_path / "absent"))
        assert outcome == ActionOutcome.refused(
            f"working directory {tmp_path / 'absent'} does not exist"
        )

    def test_output_is_captured_and_trimmed(self) -> None:
        script = "import sys; print('start'); print('x' * 100000); print('err', file=sys.stderr)"
        outcome = run([sys.executable, "-u", "-c", script])
        assert outcome.succeeded
        assert outcome.output.startswith("start\nxxx")
        assert outcome.output.endswith("xxx\nerr\n")
        assert "bytes trimmed" in outcome.output
        assert len(outcome.output.encode()) <= 4096

    def test_stdin_is_empty(self) -> None:
        outcome = run([sys.executable, "-c", "import sys; print(repr(sys.stdin.read()))"])
        assert outcome.output == "''\n"


class TestFailures:
    def test_a_non_zero_exit_is_retryable(self) -> None:
        outcome = run(["sh", "-c", "echo no capacity; exit 3"])
        assert outcome == ActionOutcome(
            succeeded=False, output="no capacity\n", error="sh exited with status 3"
        )

    def test_death_by_signal(self) -> None:
        outcome = run(["sh", "-c", "kill -9 $$"])
        assert outcome.error == "sh was killed by SIGKILL"
        assert outcome.retryable

    def test_a_missing_program_is_not_retried(self) -> None:
        outcome = run(["no-such-program-4f0c", "--now"])
        assert outcome.succeeded is False
        assert (outcome.retryable, outcome.reached_target) == (False, False)
        assert (outcome.error or "").startswith("no-such-program-4f0c: no such program (PATH=")

    def test_a_file_that_is_not_executable_is_not_retried(self, tmp_path: Path) -> None:
        script = tmp_path / "script.sh"
        script.write_text("#!/bin/sh\necho hi\n")
        outcome = run([str(script)])
        assert (outcome.retryable, outcome.reached_target) == (False, False)
        assert "cannot run it: Permission denied" in (outcome.error or "")

    def test_labels_too_big_for_one_variable_are_refused_naming_it(self, tmp_path: Path) -> None:
        # Each label is within the receiver's limit; INCIDENT_LABELS holds them all.
        labels = {f"junk{n}": "x" * 15_000 for n in range(10)}
        marker = tmp_path / "ran"
        outcome = run(["touch", str(marker)], labels)
        assert (outcome.succeeded, outcome.retryable, outcome.reached_target) == (
            False, False, False
        )
        assert (outcome.error or "").startswith("environment variable INCIDENT_LABELS would be ")
        assert not marker.exists()

    def test_a_command_the_system_cannot_start_is_not_the_targets_failure(
        self, tmp_path: Path
    ) -> None:
        # No one variable is too big, but together they pass ARG_MAX: E2BIG from exec.
        env = {f"V{n}": "{labels.big}" for n in range(30)}
        marker = tmp_path / "ran"
        outcome = run(["touch", str(marker)], {"big": "x" * 100_000}, env=env)
        assert (outcome.succeeded, outcome.retryable, outcome.reached_target) == (
            False, False, False
        )
        assert outcome.error == "touch: could not start: Argument list too long"
        assert not marker.exists()

    def test_a_missing_label_runs_nothing(self, tmp_path: Path) -> None:
        marker = tmp_path / "ran"
        outcome = run(["touch", str(marker), "{labels.instance}"])
        assert outcome == ActionOutcome.refused(
            "the incident has no label 'instance' (used as {labels.instance})"
        )
        assert not marker.exists()


class TestTimeouts:
    def test_a_hung_command_is_killed_with_its_children(self, tmp_path: Path) -> None:
        pid_file = tmp_path / "child.pid"
        started = time.monotonic()
        outcome = run(
            ["sh", "-c", 'sleep 300 & echo $! > "$1"; sleep 300', "sh", str(pid_file)],
            timeout="1s",
        )
        elapsed = time.monotonic() - started
        assert outcome.succeeded is False and outcome.retryable and outcome.reached_target
        assert outcome.error == "sh timed out after 1s"
        assert elapsed < 1 + KILL_GRACE + 2
        assert gone(int(pid_file.read_text()))

    def test_a_child_ignoring_sigterm_is_killed_after_the_grace_period(
        self, tmp_path: Path
    ) -> None:
        pid_file = tmp_path / "child.pid"
        script = "trap '' TERM; sleep 300 & echo $! > \"$1\"; wait"
        started = time.monotonic()
        rule = make_rule("command", argv=["sh", "-c", script, "sh", str(pid_file)])
        outcome = perform(rule, make_context(rule), timeout=0.5)
        elapsed = time.monotonic() - started
        assert outcome.error == "sh timed out after 0.5s"
        assert KILL_GRACE <= elapsed < 0.5 + KILL_GRACE + 2
        assert gone(int(pid_file.read_text()))

    def test_a_child_left_holding_the_output_is_a_timeout(self, tmp_path: Path) -> None:
        pid_file = tmp_path / "child.pid"
        outcome = run(
            ["sh", "-c", 'sleep 300 & echo $! > "$1"; echo started', "sh", str(pid_file)],
            timeout="1s",
        )
        assert outcome.error == (
            "sh timed out after 1s: it exited, but a process it started kept its output open"
        )
        assert outcome.output == "started\n"
        assert gone(int(pid_file.read_text()))

    def test_a_quick_command_within_its_timeout_succeeds(self) -> None:
        assert run(["sh", "-c", "sleep 0.2; echo done"], timeout="5s").output == "done\n"
