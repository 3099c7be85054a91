"""The python action: functions found through real entry points, called with the context."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from incident.remediation.actions import ActionOutcome, perform
from tests.remediation.plugins import install_plugin, plugin_module
from tests.remediation.rule_builders import make_context, make_rule

PLUGIN = """\
import time

calls = []


def record(context):
    calls.append(context)
    return f"flushed {context.labels['service']} in {context.params['pool']}"


def quiet(context):
    return {"not": "text"}


def fail(context):
    raise RuntimeError("cache cluster unreachable")


def exit_early(context):
    raise SystemExit(3)


def stubborn(context):
    # Catching Exception must not let it run past its deadline.
    for _ in range(300):
        try:
            time.sleep(0.1)
        except Exception:
            pass
    return "finished"


def nap(context):
    time.sleep(0.4)
    return "woke up"


not_a_function = 5
"""
FUNCTIONS = {
    name: name
    for name in ("record", "quiet", "fail", "exit_early", "stubborn", "nap", "not_a_function")
}


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    return install_plugin(tmp_path, monkeypatch, PLUGIN, FUNCTIONS)


def run(function: str, timeout: float | None = None, **params: Any) -> ActionOutcome:
    rule = make_rule("python", name="flush-cache", function=function, **params)
    return perform(rule, make_context(rule), timeout=timeout)


def test_the_function_gets_the_context_and_its_text_is_the_output(plugin: str) -> None:
    outcome = run("record", pool="eu-1")
    assert outcome == ActionOutcome(succeeded=True, output="flushed api in eu-1")
    (context,) = plugin_module(plugin).calls
    assert (context.remediation, context.incident_id, context.attempt) == ("flush-cache", 42, 1)


def test_a_result_that_is_not_text_is_success_without_output(plugin: str) -> None:
    assert run("quiet") == ActionOutcome(succeeded=True, output="")


def test_raising_is_a_retryable_failure_with_the_exception(plugin: str) -> None:
    outcome = run("fail")
    assert outcome.succeeded is False
    assert (outcome.retryable, outcome.reached_target) == (True, True)
    assert outcome.error == "fail raised RuntimeError: cache cluster unreachable"
    assert "Traceback" in outcome.output and 'raise RuntimeError("cache' in outcome.output


def test_sys_exit_is_a_failure_not_the_end_of_the_worker(plugin: str) -> None:
    assert run("exit_early").error == "exit_early raised SystemExit: 3"


def test_a_missing_entry_point_is_not_retried(plugin: str) -> None:
    assert run("flush_everything") == ActionOutcome.refused(
        "no entry point 'flush_everything' is installed in group 'incident.remediations'"
    )


def test_an_entry_point_that_is_not_a_function(plugin: str) -> None:
    assert run("not_a_function") == ActionOutcome.refused(
        f"entry point 'not_a_function' ({plugin}:not_a_function) is not a function"
    )


def test_a_module_that_cannot_be_imported_is_not_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = install_plugin(
        tmp_path, monkeypatch, "import no_such_driver_4f0c\n", {"broken": "flush"}
    )
    outcome = run("broken")
    assert (outcome.succeeded, outcome.retryable, outcome.reached_target) == (False, False, False)
    assert outcome.error == (
        f"entry point 'broken' ({module}:flush) cannot be loaded: "
        "ModuleNotFoundError: No module named 'no_such_driver_4f0c'"
    )


def test_a_function_past_its_timeout_is_interrupted(plugin: str) -> None:
    started = time.monotonic()
    outcome = run("stubborn", timeout=0.5)
    assert time.monotonic() - started < 2
    assert outcome == ActionOutcome(succeeded=False, error="stubborn timed out after 0.5s")


def test_the_previous_alarm_handler_and_timer_are_restored(plugin: str) -> None:
    def ours(signum: int, frame: object) -> None:
        raise AssertionError("our alarm must not fire during this test")

    previous_handler = signal.signal(signal.SIGALRM, ours)
    previous_timer = signal.setitimer(signal.ITIMER_REAL, 60)
    try:
        assert run("nap", timeout=5).succeeded
        assert signal.getsignal(signal.SIGALRM) is ours
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 55 < remaining <= 60
    finally:
        signal.setitimer(signal.ITIMER_REAL, *previous_timer)
        signal.signal(signal.SIGALRM, previous_handler)


def test_outside_the_main_thread_it_runs_without_an_alarm(plugin: str) -> None:
    # No signal can reach another thread: Celery's own time limit is what remains.
    outcomes: list[ActionOutcome] = []
    thread = threading.Thread(target=lambda: outcomes.append(run("nap", timeout=0.1)))
    thread.start()
    thread.join(timeout=5)
    assert outcomes == [ActionOutcome(succeeded=True, output="woke up")]
