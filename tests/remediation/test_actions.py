"""The actions' shared surface: the context, outcomes, output trimming, timeouts, describe()."""

from __future__ import annotations

import dataclasses
import json
from types import MappingProxyType

import pytest

from incident.remediation.actions import (
    DEFAULT_TIMEOUT,
    ActionOutcome,
    attempt_timeout,
    describe,
)
from incident.remediation.context import OUTPUT_LIMIT, CapturedOutput, trim_output
from incident.rules import Severity
from tests.remediation.plugins import install_plugin
from tests.remediation.rule_builders import make_context, make_rule


class TestContext:
    def test_carries_the_incident_and_the_rules_extra_settings(self) -> None:
        rule = make_rule("python", function="flush", pool="cache-eu", keep=[1, 2])
        context = make_context(rule, severity=Severity.SEV1, attempt=3)
        assert context.remediation == "fix"
        assert (context.incident_id, context.incident_key, context.severity) == (
            42,
            "4f0c2a",
            "SEV1",
        )
        assert context.attempt == 3
        assert dict(context.labels) == {"alertname": "HighErrorRate", "service": "api"}
        assert context.params["pool"] == "cache-eu"
        assert context.params["keep"] == (1, 2)

    def test_is_read_only_all_the_way_down(self) -> None:
        rule = make_rule("python", function="flush", options={"tiers": ["a"], "depth": {"n": 1}})
        context = make_context(rule)
        with pytest.raises(dataclasses.FrozenInstanceError):
            context.title = "other"  # type: ignore[misc]
        with pytest.raises(TypeError):
            context.labels["service"] = "db"  # type: ignore[index]
        with pytest.raises(TypeError):
            context.params["options"]["depth"]["n"] = 2
        assert isinstance(context.params["options"]["tiers"], tuple)

    def test_copies_what_it_is_given(self) -> None:
        labels = {"service": "api"}
        rule = make_rule("python", function="flush", options={"tiers": ["a"]})
        context = make_context(rule, labels=labels)
        labels["service"] = "db"
        assert context.labels["service"] == "api"
        assert rule.with_.model_extra == {"options": {"tiers": ["a"]}}
        assert isinstance(context.labels, MappingProxyType)


class TestOutcome:
    def test_failure_and_refusal(self) -> None:
        assert ActionOutcome.failure("HTTP 503\nfrom x") == ActionOutcome(
            succeeded=False, error="HTTP 503 from x", retryable=True, reached_target=True
        )
        assert ActionOutcome.refused("bad") == ActionOutcome(
            succeeded=False, error="bad", retryable=False, reached_target=False
        )

    def test_short_output_is_kept_whole(self) -> None:
        assert trim_output("all of it\n") == "all of it\n"

    def test_long_output_keeps_head_and_tail(self) -> None:
        text = "first line\n" + "x" * 100_000 + "\nlast line\n"
        trimmed = trim_output(text)
        assert len(trimmed.encode()) <= OUTPUT_LIMIT
        assert trimmed.startswith("first line\nxxx")
        assert trimmed.endswith("xxx\nlast line\n")
        assert " bytes trimmed …\n" in trimmed

    def test_trimmed_count_is_exact(self) -> None:
        captured = CapturedOutput(limit=100)
        for _ in range(50):
            captured.add(b"0123456789")
        text = captured.text()
        head, marker_and_tail = text.split("\n… ")
        count, tail = marker_and_tail.split(" bytes trimmed …\n")
        assert len(head) + int(count) + len(tail) == 500
        assert len(text.encode()) <= 100

    def test_multibyte_characters_are_not_cut_in_half(self) -> None:
        trimmed = trim_output("é" * 10_000)
        assert "\ufffd" not in trimmed
        assert len(trimmed.encode()) <= OUTPUT_LIMIT


class TestTimeout:
    def test_default(self) -> None:
        assert attempt_timeout(make_rule("command", argv=["true"])) == DEFAULT_TIMEOUT == 30.0

    @pytest.mark.parametrize("action", ["http", "command", "python"])
    def test_from_the_rule(self, action: str) -> None:
        settings = {
            "http": {"url": "http://deployer.internal/"},
            "command": {"argv": ["true"]},
            "python": {"function": "flush"},
        }[action]
        assert attempt_timeout(make_rule(action, timeout="1m30s", **settings)) == 90.0


class TestDescribe:
    def test_http_shows_the_rendered_request_without_secrets(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("DEPLOY_TOKEN", "s3cret-value")
        rule = make_rule(
            "http",
            url="http://deployer.internal:8000/services/{labels.service}/restart?i={incident.id}",
            headers={"Authorization": "Bearer {env.DEPLOY_TOKEN}", "X-Service": "{labels.service}"},
            body={"service": "{labels.service}", "id": "{incident.id}", "why": "{incident.title}"},
        )
        described = describe(rule, {"service": "api v2?"}, incident={"title": "Down api"})
        assert described == {
            "method": "POST",
            "url": "http://deployer.internal:8000/services/api%20v2%3F/restart?i={incident.id}",
            "headers": {
                "User-Agent": described["headers"]["User-Agent"],
                "Authorization": "Bearer <from $DEPLOY_TOKEN>",
                "X-Service": "api v2?",
                "Content-Type": "application/json",
            },
            "body": {"service": "api v2?", "id": "{incident.id}", "why": "Down api"},
        }
        assert "s3cret-value" not in json.dumps(described)

    def test_http_default_body(self) -> None:
        rule = make_rule("http", url="http://deployer.internal/restart")
        assert describe(rule, {"service": "api"})["body"] == {
            "remediation": "fix",
            "incident": {
                "id": "{incident.id}",
                "key": "{incident.key}",
                "title": "{incident.title}",
                "severity": "{incident.severity}",
                "url": "{incident.url}",
                "labels": {"service": "api"},
            },
        }
        get = make_rule("http", method="GET", url="http://deployer.internal/status")
        assert describe(get, {})["body"] is None

    def test_command_shows_argv_and_its_own_env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("KUBE_TOKEN", "s3cret-value")
        rule = make_rule(
            "command",
            argv=["kubectl", "rollout", "restart", "deploy/{labels.service}"],
            env={"TOKEN": "{env.KUBE_TOKEN}", "SERVICE": "{labels.service}"},
            cwd="/srv",
        )
        assert describe(rule, {"service": "api"}) == {
            "argv": ["kubectl", "rollout", "restart", "deploy/api"],
            "env": {"TOKEN": "<from $KUBE_TOKEN>", "SERVICE": "api"},
            "cwd": "/srv",
        }

    def test_python_shows_the_function_and_its_params(
        self, tmp_path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        module = install_plugin(
            tmp_path, monkeypatch, "def flush(context): pass\n", {"flush": "flush"}
        )
        rule = make_rule("python", function="flush", pool="eu")
        assert describe(rule, {}) == {
            "function": "flush",
            "params": {"pool": "eu"},
            "entry_point": f"{module}:flush",
        }
        assert describe(make_rule("python", function="absent"), {})["entry_point"] is None

    def test_what_cannot_render_is_an_error(self) -> None:
        rule = make_rule("command", argv=["ssh", "{labels.instance}", "reboot"])
        assert describe(rule, {"service": "api"}) == {
            "error": "the incident has no label 'instance' (used as {labels.instance})"
        }
