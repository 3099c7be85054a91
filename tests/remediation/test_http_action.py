"""The http action against a local server: what is sent, and how each answer is judged."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from incident.remediation.actions import ActionOutcome, perform
from incident.remediation.http_action import _checked_url, prepare_request
from incident.rules.remediations import HttpActionSettings
from incident.rules.templates import RenderError, TemplateValues
from tests.remediation.http_target import Answer, RecordingTarget
from tests.remediation.rule_builders import make_context, make_rule


@pytest.fixture
def target() -> Iterator[RecordingTarget]:
    with RecordingTarget() as server:
        yield server


def run(url: str, labels: dict[str, str] | None = None, **settings: Any) -> ActionOutcome:
    rule = make_rule("http", name="restart-api", url=url, **settings)
    return perform(rule, make_context(rule, labels))


class TestRequest:
    def test_post_with_the_default_body(self, target: RecordingTarget) -> None:
        outcome = run(f"{target.base}/services/{{labels.service}}/restart")
        assert outcome == ActionOutcome(succeeded=True, output="HTTP 200\nok")
        arrival = target.only_arrival()
        assert (arrival.method, arrival.target) == ("POST", "/services/api/restart")
        assert arrival.headers["content-type"] == "application/json"
        assert arrival.headers["user-agent"].startswith("incident/")
        assert arrival.json() == {
            "remediation": "restart-api",
            "incident": {
                "id": 42,
                "key": "4f0c2a",
                "title": "HighErrorRate api",
                "severity": "SEV2",
                "url": "http://incident.example/incidents/42",
                "labels": {"alertname": "HighErrorRate", "service": "api"},
            },
        }

    @pytest.mark.parametrize("method", ["GET", "DELETE"])
    def test_get_and_delete_send_no_body_unless_given(
        self, target: RecordingTarget, method: str
    ) -> None:
        assert run(f"{target.base}/x", method=method).succeeded
        arrival = target.only_arrival()
        assert (arrival.method, arrival.body) == (method, b"")
        assert "content-type" not in arrival.headers

    def test_a_written_body_is_rendered_and_lone_placeholders_keep_their_type(
        self, target: RecordingTarget
    ) -> None:
        body = {
            "id": "{incident.id}",
            "text": "{incident.severity}: {incident.title} ({{literal}})",
            "tags": ["{labels.service}", 3, True, None],
        }
        assert run(f"{target.base}/x", method="PUT", body=body).succeeded
        assert target.only_arrival().json() == {
            "id": 42,
            "text": "SEV2: HighErrorRate api ({literal})",
            "tags": ["api", 3, True, None],
        }

    def test_a_null_body_sends_nothing(self, target: RecordingTarget) -> None:
        assert run(f"{target.base}/x", body=None).succeeded
        assert target.only_arrival().body == b""

    def test_headers_may_read_the_workers_environment(
        self, target: RecordingTarget, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("DEPLOY_TOKEN", "s3cret")
        headers = {"Authorization": "Bearer {env.DEPLOY_TOKEN}", "Content-Type": "text/json"}
        assert run(f"{target.base}/x", headers=headers).succeeded
        arrival = target.only_arrival()
        assert arrival.headers["authorization"] == "Bearer s3cret"
        assert arrival.headers["content-type"] == "text/json"

    def test_a_missing_environment_variable_refuses_without_sending(
        self, target: RecordingTarget, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("DEPLOY_TOKEN", raising=False)
        outcome = run(f"{target.base}/x", headers={"Authorization": "Bearer {env.DEPLOY_TOKEN}"})
        assert outcome == ActionOutcome.refused(
            "environment variable DEPLOY_TOKEN is not set in the worker "
            "(used as {env.DEPLOY_TOKEN})"
        )
        assert target.arrivals == []

    def test_a_missing_label_refuses_without_sending(self, target: RecordingTarget) -> None:
        outcome = run(f"{target.base}/hosts/{{labels.instance}}/reboot")
        assert outcome.succeeded is False
        assert (outcome.retryable, outcome.reached_target) == (False, False)
        assert outcome.error == "the incident has no label 'instance' (used as {labels.instance})"
        assert target.arrivals == []

    @pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\rb", "a\0b", "a\x1bb"])
    def test_a_header_that_would_break_its_line_is_refused(
        self, target: RecordingTarget, value: str
    ) -> None:
        outcome = run(
            f"{target.base}/x", {"service": value}, headers={"X-Service": "{labels.service}"}
        )
        assert outcome == ActionOutcome.refused(
            "header 'X-Service' would contain a line break or another control character"
        )
        assert target.arrivals == []


class TestAnswers:
    def test_output_is_the_status_and_the_start_of_the_body(self, target: RecordingTarget) -> None:
        target.answer_next(Answer(503, "upstream down\n" + "x" * 20_000))
        outcome = run(f"{target.base}/services/{{labels.service}}/restart?token=abc")
        assert outcome.succeeded is False
        assert outcome.retryable and outcome.reached_target
        # The query may hold a literal token; errors are stored and shown.
        assert outcome.error == f"POST {target.base}/services/api/restart answered HTTP 503"
        assert outcome.output.startswith("HTTP 503\nupstream down\nxxx")
        assert len(outcome.output.encode()) <= 4096

    @pytest.mark.parametrize(
        ("status", "retryable"),
        [
            (500, True),
            (502, True),
            (408, True),
            (429, True),
            (400, False),
            (401, False),
            (404, False),
            (409, False),
            (413, False),
            (414, False),
            (422, False),
        ],
    )
    def test_which_failures_are_worth_retrying_and_which_the_breaker_counts(
        self, target: RecordingTarget, status: int, retryable: bool
    ) -> None:
        # A 4xx says the request was wrong (often by its label values), not
        # that the target is failing: only what may pass counts for the breaker.
        target.answer_next(Answer(status, "no"))
        outcome = run(f"{target.base}/x")
        assert (outcome.succeeded, outcome.retryable, outcome.reached_target) == (
            False,
            retryable,
            retryable,
        )
        assert outcome.error == f"POST {target.base}/x answered HTTP {status}"

    @pytest.mark.parametrize("status", [200, 201, 202, 204])
    def test_any_2xx_succeeds(self, target: RecordingTarget, status: int) -> None:
        target.answer_next(Answer(status, ""))
        assert run(f"{target.base}/x").succeeded

    def test_a_redirect_is_not_followed(self, target: RecordingTarget) -> None:
        with RecordingTarget() as elsewhere:
            target.answer_next(Answer(302, "", {"Location": f"{elsewhere.base}/steal"}))
            outcome = run(f"{target.base}/x")
            assert outcome.succeeded is False
            assert outcome.retryable is False
            assert "HTTP 302, a redirect to" in (outcome.error or "")
            assert elsewhere.arrivals == []

    def test_refused_connection_is_retryable(self) -> None:
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            port = unused.getsockname()[1]
        outcome = run(f"http://127.0.0.1:{port}/x")
        assert (outcome.succeeded, outcome.retryable, outcome.reached_target) == (
            False,
            True,
            True,
        )
        assert "ConnectError" in (outcome.error or "")

    def test_a_slow_answer_times_out(self, target: RecordingTarget) -> None:
        target.answer_next(Answer(200, "late", delay=5))
        started = time.monotonic()
        outcome = run(f"{target.base}/x", timeout="500ms")
        assert time.monotonic() - started < 2
        assert outcome.succeeded is False and outcome.retryable
        assert outcome.error == f"POST {target.base}/x timed out after 0.5s"

    def test_the_timeout_argument_overrides_the_rule(self, target: RecordingTarget) -> None:
        target.answer_next(Answer(200, "late", delay=5))
        rule = make_rule("http", url=f"{target.base}/x", timeout="1h")
        started = time.monotonic()
        outcome = perform(rule, make_context(rule), timeout=0.3)
        assert time.monotonic() - started < 2
        assert outcome.error is not None and outcome.error.endswith("timed out after 0.3s")

    def test_outside_the_main_thread_the_clients_timeout_still_applies(
        self, target: RecordingTarget
    ) -> None:
        target.answer_next(Answer(200, "late", delay=5))
        outcomes: list[ActionOutcome] = []
        thread = threading.Thread(
            target=lambda: outcomes.append(run(f"{target.base}/x", timeout="500ms"))
        )
        thread.start()
        thread.join(timeout=4)
        assert not thread.is_alive()
        assert outcomes[0].succeeded is False and outcomes[0].retryable


class TestDefenceInDepth:
    @pytest.mark.parametrize("value", ["0", "1.evil.example"])
    def test_a_rendered_url_for_another_host_is_refused(self, value: str) -> None:
        # Validation refuses a placeholder in the host; built without it, the
        # check after rendering still keeps the request on the rule's host.
        settings = HttpActionSettings.model_construct(
            url="http://127.0.0.1{labels.value}/restart", method="POST", headers={}, body=None
        )
        values = TemplateValues(labels={"value": value})
        with pytest.raises(
            RenderError, match=r"the rendered url .* does not go to http://127\.0\.0\.1\{labels"
        ):
            prepare_request(settings, values)


class TestPathValues:
    # Escaped, each would still move the request: proxies and frameworks decode
    # %2E%2E, %2F and %5C, and some fold fullwidth forms into ASCII, before routing.
    @pytest.mark.parametrize(
        "value",
        [".", "..", "a/b", "../admin", "a\\b", "..\\admin", "/", "\\", "\uff0e\uff0e", "a\uff0fb"],
    )
    def test_a_value_that_would_leave_its_segment_is_refused_naming_the_label(
        self, target: RecordingTarget, value: str
    ) -> None:
        outcome = run(f"{target.base}/services/{{labels.service}}/restart", {"service": value})
        assert (outcome.succeeded, outcome.retryable, outcome.reached_target) == (
            False,
            False,
            False,
        )
        assert (outcome.error or "").startswith(
            f"{{labels.service}} is {value!r}, which in the url path would be "
        ), outcome.error
        assert target.arrivals == []

    @pytest.mark.parametrize("value", ["..", "a/b", "a\\b"])
    def test_the_same_values_are_plain_data_in_the_query(
        self, target: RecordingTarget, value: str
    ) -> None:
        assert run(f"{target.base}/restart?service={{labels.service}}", {"service": value}).succeeded
        arrival = target.only_arrival()
        assert (arrival.path, arrival.query) == ("/restart", f"service={quote(value, safe='')}")

    @pytest.mark.parametrize("value", ["...", "a..b", ".hidden", "v1.2"])
    def test_dots_that_are_not_a_dot_segment_pass_unescaped(
        self, target: RecordingTarget, value: str
    ) -> None:
        assert run(f"{target.base}/services/{{labels.service}}", {"service": value}).succeeded
        assert target.only_arrival().path == f"/services/{value}"

    def test_a_rendered_url_that_leaves_the_rules_path_is_refused(self) -> None:
        # Values cannot do it; checked after rendering all the same.
        with pytest.raises(RenderError, match=r"leaves the path '/services/'"):
            _checked_url("http://127.0.0.1/admin/x", "http://127.0.0.1/services/{labels.x}")
