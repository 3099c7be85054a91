"""Hostile label values reach every action as inert data.

Alert labels come from whatever a Prometheus target exports, so each value
below must arrive exactly as written, in the one place its placeholder stood:
never run by a shell, never read as an option, never a new path segment,
host, query, header or line.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from incident.remediation.actions import ActionOutcome, perform
from tests.remediation.http_target import RecordingTarget
from tests.remediation.plugins import install_plugin, plugin_module
from tests.remediation.rule_builders import make_context, make_rule

HUNDRED_KB = "A" * 50_000 + "/../?#@\n" + "B" * 50_000
CASES = {
    "command-substitution": "$(reboot)",
    "touch-marker": "$(touch MARKER) `touch MARKER`",
    "command-separator": "; rm -rf /",
    "path-traversal": "../../etc/passwd",
    "host-then-fragment": "evil.example#",
    "userinfo": "@evil.example",
    "newline": "api\nX-Injected: yes",
    "100kb": HUNDRED_KB,
    "leading-dash-option": "-rf",
}
# A 100 KB value cannot fit in a URL at all; it is tested on its own below.
URL_CASES = [name for name in CASES if name != "100kb"]


def value_for(case: str, marker: Path) -> str:
    return CASES[case].replace("MARKER", str(marker))


class TestHttp:
    @pytest.fixture
    def target(self) -> Iterator[RecordingTarget]:
        with RecordingTarget() as server:
            yield server

    @pytest.mark.parametrize("case", URL_CASES)
    def test_value_stays_in_its_query_parameter_on_the_same_host(
        self, target: RecordingTarget, case: str, tmp_path: Path
    ) -> None:
        value = value_for(case, tmp_path / "marker")
        rule = make_rule("http", url=f"{target.base}/services/restart?service={{labels.value}}")
        outcome = perform(rule, make_context(rule, {"value": value}))
        assert outcome.succeeded, outcome
        arrival = target.only_arrival()
        assert arrival.headers["host"] == f"127.0.0.1:{target.port}"
        assert (arrival.path, arrival.query) == (
            "/services/restart", f"service={quote(value, safe='')}"
        )
        assert arrival.json()["incident"]["labels"]["value"] == value
        assert not (tmp_path / "marker").exists()

    @pytest.mark.parametrize("case", URL_CASES)
    def test_value_stays_in_its_path_segment_or_is_refused_unsent(
        self, target: RecordingTarget, case: str, tmp_path: Path
    ) -> None:
        value = value_for(case, tmp_path / "marker")
        rule = make_rule("http", url=f"{target.base}/services/{{labels.value}}/restart")
        outcome = perform(rule, make_context(rule, {"value": value}))
        if "/" in value:
            # Proxies decode %2F: a separator could add segments however escaped.
            assert (outcome.succeeded, outcome.reached_target) == (False, False)
            assert "{labels.value}" in (outcome.error or "")
            assert target.arrivals == []
        else:
            assert outcome.succeeded, outcome
            arrival = target.only_arrival()
            assert arrival.headers["host"] == f"127.0.0.1:{target.port}"
            assert arrival.path == f"/services/{quote(value, safe='')}/restart"
        assert not (tmp_path / "marker").exists()

    def test_100kb_value_in_the_url_is_refused_before_sending(
        self, target: RecordingTarget
    ) -> None:
        rule = make_rule("http", url=f"{target.base}/services/restart?service={{labels.value}}")
        outcome = perform(rule, make_context(rule, {"value": HUNDRED_KB}))
        assert (outcome.succeeded, outcome.retryable, outcome.reached_target) == (
            False,
            False,
            False,
        )
        assert outcome.error == "the rendered url is not valid: URL too long"
        assert target.arrivals == []

    def test_100kb_value_in_the_body_arrives_whole(self, target: RecordingTarget) -> None:
        rule = make_rule("http", url=f"{target.base}/restart", body={"value": "{labels.value}"})
        assert perform(rule, make_context(rule, {"value": HUNDRED_KB})).succeeded
        arrival = target.only_arrival()
        assert (arrival.path, arrival.json()) == ("/restart", {"value": HUNDRED_KB})

    @pytest.mark.parametrize("case", ["newline"])
    def test_value_cannot_add_a_header(self, target: RecordingTarget, case: str) -> None:
        rule = make_rule("http", url=f"{target.base}/x", headers={"X-Value": "{labels.value}"})
        outcome = perform(rule, make_context(rule, {"value": CASES[case]}))
        assert outcome == ActionOutcome.refused(
            "header 'X-Value' would contain a line break or another control character"
        )
        assert target.arrivals == []


class TestCommand:
    @pytest.fixture
    def recorder(self, tmp_path: Path) -> list[str]:
        script = tmp_path / "record.py"
        script.write_text(
            "import json, os, sys\n"
            "with open(sys.argv[1], 'w') as record:\n"
            "    json.dump({'argv': sys.argv[2:], 'env': dict(os.environ)}, record)\n"
        )
        return [sys.executable, str(script), str(tmp_path / "record.json")]

    @pytest.mark.parametrize("case", list(CASES))
    def test_value_arrives_verbatim_as_one_argument_and_nothing_else_runs(
        self, recorder: list[str], case: str, tmp_path: Path
    ) -> None:
        value = value_for(case, tmp_path / "marker")
        rule = make_rule(
            "command",
            argv=[*recorder, "--", "{labels.value}", "--service={labels.value}"],
            env={"VALUE": "{labels.value}"},
        )
        outcome = perform(rule, make_context(rule, {"value": value}))
        assert outcome.succeeded, outcome
        record = json.loads((tmp_path / "record.json").read_text())
        assert record["argv"] == ["--", value, f"--service={value}"]
        assert record["env"]["VALUE"] == value
        assert json.loads(record["env"]["INCIDENT_LABELS"])["value"] == value
        assert not (tmp_path / "marker").exists()

    def test_a_value_read_as_an_option_is_refused_without_end_of_options(
        self, tmp_path: Path
    ) -> None:
        marker = tmp_path / "ran"
        rule = make_rule("command", argv=["touch", str(marker), "{labels.value}"])
        outcome = perform(rule, make_context(rule, {"value": CASES["leading-dash-option"]}))
        assert outcome == ActionOutcome.refused(
            "argv[2] {labels.value} would be '-rf', which the program would read as an "
            'option; put "--" before it in argv if it is an operand'
        )
        assert not marker.exists()

    def test_a_nul_byte_is_refused(self, recorder: list[str], tmp_path: Path) -> None:
        rule = make_rule("command", argv=[*recorder, "{labels.value}"])
        outcome = perform(rule, make_context(rule, {"value": "a\0b"}))
        assert outcome == ActionOutcome.refused("argv[3] would contain a NUL byte")
        assert not (tmp_path / "record.json").exists()


class TestPython:
    @pytest.fixture
    def plugin(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
        source = "calls = []\n\ndef record(context):\n    calls.append(context)\n"
        return install_plugin(tmp_path, monkeypatch, source, {"record": "record"})

    @pytest.mark.parametrize("case", list(CASES))
    def test_value_arrives_verbatim_in_a_read_only_context(
        self, plugin: str, case: str, tmp_path: Path
    ) -> None:
        value = value_for(case, tmp_path / "marker")
        rule = make_rule("python", function="record")
        assert perform(rule, make_context(rule, {"value": value})).succeeded
        (context,) = plugin_module(plugin).calls
        assert context.labels["value"] == value
        with pytest.raises(TypeError):
            context.labels["value"] = "changed"
        with pytest.raises(dataclasses.FrozenInstanceError):
            context.labels = {}
        assert context.labels["value"] == value
        assert not (tmp_path / "marker").exists()
