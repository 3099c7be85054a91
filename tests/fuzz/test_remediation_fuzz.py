"""Hostile label values against every action type: http, command and python.

Labels are whatever a scrape target exports. Whatever a value holds (hundreds
of kilobytes, control characters, dot segments, slashes, a leading ``-``,
shell metacharacters, blanks and line breaks that would break a header,
non-ASCII), an action either does exactly what the rule says with the value
as inert data, or refuses before doing anything. In both cases no error holds
the secret a header or variable carries, no request leaves the rule's host
and path, no argument becomes an option or a command, and a failure the value
caused is never counted against the target's circuit breaker.
"""

from __future__ import annotations

import itertools
import json
import operator
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, unquote

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from incident.remediation.actions import ActionOutcome, perform
from incident.rules import parse_rules
from tests import factories
from tests.fuzz.conftest import CHARS, fuzz_settings
from tests.remediation.http_target import Answer, RecordingTarget
from tests.remediation.plugins import install_plugin, plugin_module
from tests.remediation.rule_builders import make_context, make_rule
from tests.remediation.test_engine import Harness, runs

pytestmark = pytest.mark.fuzz

SECRET = "fuzz-secret-3c9d1e77"
PREFIX = "/api/v1/services/"

SHELL = [
    "$(touch pwned)", "`touch pwned`", "; touch pwned", "| touch pwned", "&& touch pwned",
    "> pwned", "$HOME", "~root", "*", "'", '"', "\\", "$((1+1))", "a\nb",
]
PATHS = [
    ".", "..", "...", "./", "../", "..\\", "%2e%2e", "%2E%2E%2F", ".%2e", "\uff0e\uff0e", "\uff0f",
    "a/../b", "/", "//evil.example", "\\\\evil", "../../etc/passwd", "?x=1", "#frag", "@evil",
]
BLANKS = [" ", "\t", " x", "x ", "\tx\t", "a\r\nX-Injected: 1", "\n", "\r", "\x0b", "\x85", "\u2028"]
OPTIONS = ["-rf", "--help", "-", "--", "-o/tmp/pwned", "--output=/etc/passwd"]
NON_ASCII = ["ünï", "😀", "\u202eevil", "\ufeff", "e\u0301", "\U0010ffff", "𝔘𝔫𝔦"]
SINGLES = SHELL + PATHS + BLANKS + OPTIONS + NON_ASCII


def hostile_label_values(*, max_huge: int = 140_000) -> st.SearchStrategy[str]:
    """Non-empty (an empty label is an absent one) and NUL-free (the receiver refuses NUL)."""
    control = st.text(
        st.characters(min_codepoint=1, max_codepoint=0x1F) | st.just("\x7f"), min_size=1, max_size=4
    )
    piece = st.one_of(st.sampled_from(SINGLES), control, st.text(CHARS, min_size=1, max_size=12))
    huge = st.builds(
        operator.mul, st.sampled_from(["x", "é", "😀", "/", ".", " ", "-", "\x01", "a/"]),
        st.integers(1_000, max_huge),
    )
    return st.one_of(
        st.sampled_from(SINGLES), st.lists(piece, min_size=1, max_size=4).map("".join), huge
    )


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUZZ_SECRET", SECRET)


@pytest.fixture
def target() -> Iterator[RecordingTarget]:
    with RecordingTarget() as server:
        yield server


def assert_no_secret(outcome: ActionOutcome) -> None:
    assert SECRET not in (outcome.error or "") and SECRET not in outcome.output, outcome


def assert_request_fault_only(outcome: ActionOutcome) -> None:
    # Every target here is healthy: any failure is the request's, never counted.
    assert outcome.succeeded or not outcome.reached_target, outcome


@fuzz_settings(300)
@given(value=hostile_label_values(), status=st.sampled_from([200, 400, 404, 413, 414, 422]))
def test_http_requests_stay_on_the_rules_host_and_path_and_errors_keep_the_secret(
    target: RecordingTarget, value: str, status: int
) -> None:
    target.reset()
    target.answer_next(Answer(status, "ok"))
    rule = make_rule(
        "http",
        url=f"{target.base}{PREFIX}{{labels.value}}/restart?service={{labels.value}}",
        headers={"X-Deploy-Token": "{env.FUZZ_SECRET}{labels.value}"},
    )
    outcome = perform(rule, make_context(rule, {"value": value}))
    assert_no_secret(outcome)
    assert_request_fault_only(outcome)
    arrivals = target.arrivals
    assert len(arrivals) <= 1
    assert outcome.succeeded == (arrivals != [] and status == 200)
    for arrival in arrivals:
        assert arrival.headers["host"] == f"127.0.0.1:{target.port}"
        assert arrival.path.startswith(PREFIX) and arrival.path.endswith("/restart"), arrival
        segment = arrival.path.removeprefix(PREFIX).removesuffix("/restart")
        assert "/" not in segment and unquote(segment) == value
        assert parse_qs(arrival.query, keep_blank_values=True) == {"service": [value]}


@fuzz_settings(80)
@given(value=hostile_label_values())
def test_commands_get_the_value_as_exactly_one_operand_and_nothing_else_runs(
    tmp_path: Path, value: str
) -> None:
    record = tmp_path / "record.json"
    script = tmp_path / "record.py"
    script.write_text(
        "import json, os, sys\n"
        f"with open({str(record)!r}, 'w') as out:\n"
        "    json.dump({'argv': sys.argv[1:], 'env': dict(os.environ)}, out)\n"
    )
    program = [sys.executable, "-I", "-S", str(script)]
    ended = make_rule(
        "command", argv=[*program, "--", "{labels.value}", "--opt={labels.value}"],
        env={"DEPLOY_TOKEN": "{env.FUZZ_SECRET}", "VALUE": "{labels.value}"}, cwd=str(tmp_path),
    )
    bare = make_rule("command", argv=[*program, "{labels.value}"], cwd=str(tmp_path))

    for rule, expected_argv in ((ended, ["--", value, f"--opt={value}"]), (bare, [value])):
        record.unlink(missing_ok=True)
        outcome = perform(rule, make_context(rule, {"value": value}))
        assert_no_secret(outcome)
        assert_request_fault_only(outcome)
        assert outcome.succeeded == record.exists(), outcome
        if outcome.succeeded:
            seen = json.loads(record.read_text())
            assert seen["argv"] == expected_argv
            assert json.loads(seen["env"]["INCIDENT_LABELS"])["value"] == value
            if rule is ended:
                assert (seen["env"]["VALUE"], seen["env"]["DEPLOY_TOKEN"]) == (value, SECRET)
        if rule is bare and value.startswith("-"):
            assert not outcome.succeeded, "a leading '-' before any '--' would be an option"
        assert not (tmp_path / "pwned").exists()


@pytest.fixture
def recording_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list:
    """A python action that keeps each context it is called with; answers that list."""
    source = "calls = []\n\ndef record(context):\n    calls.append(context)\n"
    module = install_plugin(tmp_path, monkeypatch, source, {"fuzz_record": "record"})
    return plugin_module(module).calls


@fuzz_settings(100)
@given(value=hostile_label_values())
def test_python_actions_get_the_value_verbatim(recording_plugin: list, value: str) -> None:
    recording_plugin.clear()
    rule = make_rule("python", function="fuzz_record")
    outcome = perform(rule, make_context(rule, {"value": value}))
    assert outcome == ActionOutcome.success()
    (context,) = recording_plugin
    assert context.labels["value"] == value


_services = itertools.count()


@pytest.fixture
def engine_rules(target: RecordingTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    script = tmp_path / "ok.py"
    script.write_text("import sys\n")
    install_plugin(tmp_path, monkeypatch, "def ok(context):\n    return None\n", {"fuzz_ok": "ok"})
    breaker = "circuit_breaker: {failure_threshold: 1, reset_after: 1h, key: '{labels.instance}'}"
    return parse_rules(f"""
remediations:
  - name: by-http
    matchers: ['alertname="HighErrorRate"']
    action: http
    with:
      url: "{target.base}{PREFIX}{{labels.value}}/restart?service={{labels.value}}"
      headers: {{X-Deploy-Token: "{{env.FUZZ_SECRET}}{{labels.value}}"}}
      timeout: 5s
    {breaker}
  - name: by-command
    matchers: ['alertname="HighErrorRate"']
    action: command
    with:
      argv: {json.dumps([sys.executable, "-I", "-S", str(script), "--", "{labels.value}"])}
      env: {{DEPLOY_TOKEN: "{{env.FUZZ_SECRET}}"}}
      cwd: {json.dumps(str(tmp_path))}
      timeout: 10s
    {breaker}
  - name: by-python
    matchers: ['alertname="HighErrorRate"']
    action: python
    with: {{function: fuzz_ok}}
    {breaker}
""")


@fuzz_settings(25)
@given(
    value=hostile_label_values(max_huge=16_000),
    padded=st.booleans(),
    status=st.sampled_from([200, 404, 414]),
)
def test_the_engine_never_counts_a_failure_hostile_labels_cause(
    clean_state, redis_client, target: RecordingTarget, engine_rules, value: str, padded: bool,
    status: int,
) -> None:
    target.reset()
    target.answer_next(Answer(status, "ok"))
    # Padding: every label within the receiver's limit, INCIDENT_LABELS over the kernel's.
    padding = {f"pad{n}": "p" * 15_000 for n in range(10)} if padded else {}
    harness = Harness(engine_rules, redis_client)
    alert = factories.alert(
        service=f"fuzz-{next(_services)}", instance="db-1", value=value, **padding
    )
    with structlog.testing.capture_logs() as logs:
        harness.run_to_the_end(harness.ingest(factories.payload(alert)))
    states = harness.engine.breakers.states()
    assert [s for s in states if s["state"] != "closed"] == []
    assert SECRET not in repr([(r.last_error, r.output) for r in runs()])
    assert SECRET not in repr(logs)
