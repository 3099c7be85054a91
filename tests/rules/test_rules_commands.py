"""`incident rules check` and `incident rules test`: output and exit codes."""

from __future__ import annotations

import io
import json
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest

from incident.cli.rules import check, explain
from tests.remediation.plugins import install_plugin

RULES = dedent(
    """\
    remediations:
      - name: restart-api
        matchers: ['alertname="HighErrorRate"', 'service="api"']
        action: http
        with: {url: "http://deployer.internal/services/{labels.service}/restart"}
        on_failure: escalate
      - name: flush-cache
        matchers: ['alertname="CacheFull"']
        action: python
        with: {function: flush_cache}
    """
)


def alert(fingerprint: str, status: str, **labels: str) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": "HighErrorRate", "service": "api", **labels},
        "annotations": {"summary": "5xx above 5%"},
        "startsAt": "2024-05-01T10:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus/graph",
        "fingerprint": fingerprint,
    }


def payload(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": '{}:{alertname="HighErrorRate", service="api"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "incident",
        "groupLabels": {"service": "api", "alertname": "HighErrorRate"},
        "commonLabels": {"alertname": "HighErrorRate", "service": "api"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
    }


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return path


@pytest.fixture
def flush_cache_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The python action RULES names, registered as a real entry point."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    source = "def flush(context):\n    return 'flushed'\n"
    return install_plugin(plugins, monkeypatch, source, {"flush_cache": "flush"})


def write_json(tmp_path: Path, document: Any) -> Path:
    path = tmp_path / "payload.json"
    path.write_text(json.dumps(document))
    return path


def run(command, *args: Any, **kwargs: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = command(*args, out=out, err=err, **kwargs)
    return code, out.getvalue(), err.getvalue()


class TestCheck:
    @pytest.mark.usefixtures("flush_cache_installed")
    def test_valid_file(self, rules_file: Path) -> None:
        assert run(check, rules_file) == (
            0,
            f"OK: {rules_file}: 4 severity rules, 2 remediations, 0 routes\n",
            "",
        )

    def test_built_in_defaults(self) -> None:
        assert run(check, None) == (
            0,
            "OK: built-in defaults: 4 severity rules, 0 remediations, 0 routes\n",
            "",
        )

    def test_invalid_file_names_the_line(self, tmp_path: Path) -> None:
        path = tmp_path / "rules.yaml"
        path.write_text(
            "severity:\n  default: SEV1\n  rules:\n    - matchers: ['a=\"b\"']\n"
            "      severity: critical\n"
        )
        code, out, err = run(check, path)
        assert (code, out) == (1, "")
        assert err.startswith(f"{path}:5: severity.rules[0].severity: must be one of 'SEV1'")

    def test_a_python_function_that_is_not_installed_names_its_line(self, rules_file: Path) -> None:
        code, out, err = run(check, rules_file)
        assert (code, out) == (1, "")
        assert err == (
            f"{rules_file}:10: remediations[1].with.function: no entry point 'flush_cache' "
            "is installed in group 'incident.remediations'\n"
        )

    def test_the_line_of_a_function_in_block_style(self, tmp_path: Path) -> None:
        path = tmp_path / "rules.yaml"
        path.write_text(
            "remediations:\n"
            "  - name: flush\n"
            "    matchers: ['a=\"b\"']\n"
            "    action: python\n"
            "    with:\n"
            "      pool: eu\n"
            "      function: not_installed_4f0c\n"
        )
        code, _, err = run(check, path)
        assert code == 1
        assert err.startswith(f"{path}:7: remediations[0].with.function: no entry point ")

    @pytest.mark.parametrize(
        ("rule", "regex"), [(0, r"(a)\1"), (1, "(?=x)x"), (2, "(?<=a)b")]
    )
    def test_a_regex_re2_refuses_names_its_line(self, tmp_path: Path, rule: int, regex: str) -> None:
        # RE2, like Alertmanager's Go regexp, has no backreferences or look-around.
        values = ["prod", "staging", "dev"]
        values[rule] = regex
        path = tmp_path / "rules.yaml"
        path.write_text(
            "severity:\n  rules:\n"
            + "".join(
                f"    - {{severity: SEV{n + 1}, matchers: ['instance=~\"{value}\"']}}\n"
                for n, value in enumerate(values)
            )
        )
        code, out, err = run(check, path)
        assert (code, out) == (1, "")
        assert err.startswith(
            f"{path}:{rule + 3}: severity.rules[{rule}].matchers[0]: invalid matcher "
        ), err
        assert "invalid regular expression" in err

    def test_missing_file(self, tmp_path: Path) -> None:
        code, out, err = run(check, tmp_path / "absent.yaml")
        assert (code, out) == (1, "")
        assert err == f"{tmp_path / 'absent.yaml'}: no such rules file\n"


class TestExplain:
    def test_text_report(self, rules_file: Path, tmp_path: Path) -> None:
        document = payload(
            alert("3f1c2b4a5d6e7f80", "firing", severity="critical", env="prod"),
            alert("a8b2c3d4e5f60718", "resolved", severity="warning"),
        )
        code, out, err = run(explain, rules_file, write_json(tmp_path, document))
        assert (code, err) == (0, "")
        assert out.splitlines() == [
            "Group: HighErrorRate api",
            "Summary: 5xx above 5%",
            "Alerts (2):",
            (
                '  3f1c2b4a5d6e7f80  firing    SEV1  {alertname="HighErrorRate", env="prod", '
                'service="api", severity="critical"}'
            ),
            (
                '  a8b2c3d4e5f60718  resolved  SEV3  {alertname="HighErrorRate", service="api", '
                'severity="warning"}'
            ),
            "Incident severity: SEV1 (worst of 1 firing)",
            "Remediations (matched on the group's common labels):",
            (
                "  restart-api  http  POST http://deployer.internal/services/{labels.service}/restart"
                "  (attempts 1, on failure: escalate)"
            ),
            "    POST http://deployer.internal/services/api/restart",
            "    User-Agent: incident/0.1.0 remediation",
            "    Content-Type: application/json",
            (
                '    body: {"remediation": "restart-api", "incident": {"id": "{incident.id}", '
                '"key": "{incident.key}", "title": "HighErrorRate api", "severity": "SEV1", '
                '"url": "{incident.url}", "labels": {"alertname": "HighErrorRate", '
                '"service": "api"}}}'
            ),
            "Escalation for SEV1:",
            "  pagerduty: critical",
            "  slack: default channel",
            "  email: off",
            "  ack_timeout: 5m, repeat: 3",
            "Route: none matched: the defaults",
            "  slack: default channel",
            "  pagerduty: default routing key (INCIDENT_PAGERDUTY_ROUTING_KEY)",
            "  email: default recipients (INCIDENT_EMAIL_TO)",
        ]

    def test_severity_is_the_worst_of_the_firing_alerts(self, tmp_path: Path) -> None:
        document = payload(
            alert("aaaa", "firing", severity="warning"),
            alert("bbbb", "firing", severity="critical"),
            alert("cccc", "resolved", severity="critical", env="prod"),
        )
        code, out, _ = run(explain, None, write_json(tmp_path, document), as_json=True)
        report = json.loads(out)
        assert code == 0
        assert report["severity"] == "SEV2"
        assert [each["severity"] for each in report["alerts"]] == ["SEV3", "SEV2", "SEV1"]

    def test_nothing_firing_opens_no_incident(self, rules_file: Path, tmp_path: Path) -> None:
        document = payload(alert("aaaa", "resolved", severity="critical"))
        code, out, _ = run(explain, rules_file, write_json(tmp_path, document))
        assert code == 0
        assert "Incident severity: none: no alert is firing" in out
        assert "Remediations: none\n" in out
        assert "Escalation: none" in out

        code, out, _ = run(explain, rules_file, write_json(tmp_path, document), as_json=True)
        report = json.loads(out)
        assert (report["severity"], report["remediations"], report["escalation"]) == (
            None,
            [],
            None,
        )

    def test_json_report(self, rules_file: Path, tmp_path: Path) -> None:
        document = payload(alert("3f1c", "firing", severity="warning"))
        code, out, err = run(explain, rules_file, write_json(tmp_path, document), as_json=True)
        assert (code, err) == (0, "")
        assert json.loads(out) == {
            "title": "HighErrorRate api",
            "summary": "5xx above 5%",
            "severity": "SEV3",
            "alerts": [
                {
                    "fingerprint": "3f1c",
                    "status": "firing",
                    "severity": "SEV3",
                    "labels": {
                        "alertname": "HighErrorRate",
                        "service": "api",
                        "severity": "warning",
                    },
                }
            ],
            "remediations": [
                {
                    "name": "restart-api",
                    "action": "http",
                    "target": "POST http://deployer.internal/services/{labels.service}/restart",
                    "on_failure": "escalate",
                    "attempts": 1,
                    "run_on_reopen": False,
                    "request": {
                        "method": "POST",
                        "url": "http://deployer.internal/services/api/restart",
                        "headers": {
                            "User-Agent": "incident/0.1.0 remediation",
                            "Content-Type": "application/json",
                        },
                        "body": {
                            "remediation": "restart-api",
                            "incident": {
                                "id": "{incident.id}",
                                "key": "{incident.key}",
                                "title": "HighErrorRate api",
                                "severity": "SEV3",
                                "url": "{incident.url}",
                                "labels": {"alertname": "HighErrorRate", "service": "api"},
                            },
                        },
                    },
                }
            ],
            "escalation": {
                "severity": "SEV3",
                "pagerduty": None,
                "slack": True,
                "slack_channel": None,
                "email": False,
                "ack_timeout": None,
                "repeat": 0,
                "escalate_after": "1h",
                "escalate_to": "SEV2",
            },
            "route": {"routes": [], "slack": [], "pagerduty": [], "email": []},
        }

    def test_title_without_alertname_in_group_labels(self, tmp_path: Path) -> None:
        document = payload(alert("aaaa", "firing"))
        document["groupLabels"] = {"service": "api", "cluster": "eu-1"}
        _, out, _ = run(explain, None, write_json(tmp_path, document))
        assert out.startswith("Group: HighErrorRate eu-1 api\n")

    def test_payload_from_standard_input(self, monkeypatch: pytest.MonkeyPatch) -> None:
        document = payload(alert("aaaa", "firing", severity="info"))
        monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(document)))
        code, out, _ = run(explain, None, "-", as_json=True)
        assert (code, json.loads(out)["severity"]) == (0, "SEV4")

    def test_invalid_json(self, tmp_path: Path) -> None:
        path = tmp_path / "payload.json"
        path.write_text('{\n  "version": "4",\n  "alerts": [,]\n}')
        code, out, err = run(explain, None, path)
        assert (code, out) == (1, "")
        assert err.startswith(f"{path}:3:14: invalid JSON: ")

    def test_invalid_payload_names_the_failing_fields(self, tmp_path: Path) -> None:
        document = payload(alert("aaaa", "firing"))
        document["version"] = "3"
        del document["alerts"][0]["fingerprint"]
        code, out, err = run(explain, None, write_json(tmp_path, document))
        assert (code, out) == (1, "")
        assert "not an Alertmanager webhook payload (version 4)" in err
        assert "  version: Input should be '4', got '3'\n" in err
        assert "  alerts[0].fingerprint: Field required\n" in err

    def test_missing_payload_file(self, tmp_path: Path) -> None:
        code, _, err = run(explain, None, tmp_path / "absent.json")
        assert code == 1
        assert err == f"{tmp_path / 'absent.json'}: no such payload file\n"

    def test_invalid_rules_file(self, tmp_path: Path) -> None:
        rules = tmp_path / "rules.yaml"
        rules.write_text("escalation:\n  SEV1: {pagerduty: loud}\n")
        code, _, err = run(explain, rules, write_json(tmp_path, payload(alert("a", "firing"))))
        assert code == 1
        assert err.startswith(f"{rules}:2: escalation.SEV1.pagerduty: must be one of")


class TestExplainShowsWhatWouldRun:
    RULES = dedent(
        """\
        remediations:
          - name: restart-api
            matchers: ['service="api"']
            action: http
            with:
              url: "http://deployer.internal/services/{labels.service}/restart"
              method: PUT
              headers: {Authorization: "Bearer {env.DEPLOY_TOKEN}"}
              body: {service: "{labels.service}", reason: "{incident.title}"}
          - name: scale
            matchers: ['service="api"']
            action: command
            with:
              argv: [kubectl, scale, "deploy/{labels.service}", "--replicas=4"]
              env: {TOKEN: "{env.KUBE_TOKEN}"}
          - name: flush
            matchers: ['service="api"']
            action: python
            with: {function: flush_cache, pool: eu}
          - name: reboot-host
            matchers: ['service="api"']
            action: command
            with: {argv: [ssh, "{labels.instance}", reboot]}
        """
    )

    def report(self, tmp_path: Path, **kwargs: Any) -> str:
        rules = tmp_path / "rules.yaml"
        rules.write_text(self.RULES)
        document = payload(alert("3f1c", "firing", severity="critical"))
        code, out, err = run(explain, rules, write_json(tmp_path, document), **kwargs)
        assert (code, err) == (0, "")
        return out

    def test_text(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("DEPLOY_TOKEN", "s3cret-deploy")
        monkeypatch.setenv("KUBE_TOKEN", "s3cret-kube")
        out = self.report(tmp_path)
        assert "s3cret" not in out
        assert "    PUT http://deployer.internal/services/api/restart\n" in out
        assert "    Authorization: Bearer <from $DEPLOY_TOKEN>\n" in out
        assert '    body: {"service": "api", "reason": "HighErrorRate api"}\n' in out
        assert "    argv: kubectl scale deploy/api --replicas=4\n" in out
        assert "    env: TOKEN=<from $KUBE_TOKEN>\n" in out
        assert "    function: flush_cache (NOT INSTALLED)\n" in out
        assert '    params: {"pool": "eu"}\n' in out
        assert (
            "    would not run: the incident has no label 'instance' (used as {labels.instance})\n"
        ) in out

    def test_json(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flush_cache_installed: str
    ) -> None:
        monkeypatch.setenv("DEPLOY_TOKEN", "s3cret-deploy")
        out = self.report(tmp_path, as_json=True)
        assert "s3cret" not in out
        requests = [each["request"] for each in json.loads(out)["remediations"]]
        assert requests[0]["headers"]["Authorization"] == "Bearer <from $DEPLOY_TOKEN>"
        assert requests[1] == {
            "argv": ["kubectl", "scale", "deploy/api", "--replicas=4"],
            "env": {"TOKEN": "<from $KUBE_TOKEN>"},
        }
        assert requests[2] == {
            "function": "flush_cache",
            "params": {"pool": "eu"},
            "entry_point": f"{flush_cache_installed}:flush",
        }
        assert requests[3] == {
            "error": "the incident has no label 'instance' (used as {labels.instance})"
        }
