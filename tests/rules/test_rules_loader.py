"""Loading a rules file: defaults, typed values, and errors that name file, line and field."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from textwrap import dedent

import pytest

from incident.rules import (
    HttpRemediation,
    Rules,
    RulesError,
    Severity,
    load_rules,
    parse_matchers,
    parse_rules,
)

INTERFACE_EXAMPLE = dedent(
    """\
    severity:
      default: SEV3
      rules:                       # first match wins
        - matchers: ['severity="critical"', 'env="prod"']
          severity: SEV1
        - matchers: ['severity="critical"']
          severity: SEV2
        - matchers: ['severity=~"warning|error"']
          severity: SEV3
        - matchers: ['severity=~"info|none"']
          severity: SEV4

    remediations:
      - name: restart-api
        matchers: ['alertname="HighErrorRate"', 'service="api"']
        action: http               # http | command | python
        with:
          method: POST
          url: "http://deployer.internal:8000/services/{labels.service}/restart"
          timeout: 10s
        retry: {attempts: 4, backoff: 2s, max_backoff: 60s}
        circuit_breaker: {failure_threshold: 3, reset_after: 5m}
        on_failure: escalate       # escalate | notify | ignore

    escalation:
      SEV1: {pagerduty: critical, slack: true, ack_timeout: 5m, repeat: 3}
      SEV2: {pagerduty: error,    slack: true, ack_timeout: 15m}
      SEV3: {slack: true, escalate_after: 1h, escalate_to: SEV2}
      SEV4: {slack: true}

    maintenance:
      retention: 90d
      stale_after: 24h
      reopen_window: 30m
      flapping: {transitions: 4, within: 1h}
      log_rotation: {every: 1h, compress_after: 1d, delete_after: 30d}
      backup: {schedule: "0 2 * * *", keep: 7, max_age: 26h, verify: restore}
      watchdog: {alertname: Watchdog, max_silence: 10m, severity: SEV1}
    """
)

REMEDIATION = """\
remediations:
  - name: restart-api
    matchers: ['service="api"']
    action: http
    with:
      url: "http://deployer.internal/restart"
"""


def rules_error(text: str) -> RulesError:
    with pytest.raises(RulesError) as raised:
        parse_rules(dedent(text), source="rules.yaml")
    return raised.value


def assert_reported(error: RulesError, line: int, field: str, message: str) -> None:
    """The error has a `rules.yaml:LINE: field: message` line."""
    pattern = rf"^rules\.yaml:{line}: {re.escape(field)}: .*{message}"
    assert re.search(pattern, str(error), re.MULTILINE), str(error)


class TestDefaults:
    def test_no_file_gives_the_interface_example(self) -> None:
        example = parse_rules(INTERFACE_EXAMPLE)
        defaults = load_rules(None)
        assert defaults.severity == example.severity
        assert defaults.escalation == example.escalation
        assert defaults.remediations == ()
        assert defaults.maintenance == example.maintenance.model_copy(update={"watchdog": None})

    @pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
    def test_empty_file_gives_the_defaults(self, text: str) -> None:
        assert parse_rules(text) == load_rules(None)

    def test_an_omitted_field_keeps_its_default(self) -> None:
        rules = parse_rules("severity: {default: SEV2}\nmaintenance: {flapping: {transitions: 6}}")
        assert rules.severity.default is Severity.SEV2
        assert len(rules.severity.rules) == 4
        assert rules.maintenance.flapping.transitions == 6
        assert rules.maintenance.flapping.within == timedelta(hours=1)
        assert rules.maintenance.reopen_window == timedelta(minutes=30)

    def test_a_severity_left_out_of_escalation_keeps_its_policy(self) -> None:
        rules = parse_rules("escalation:\n  SEV4: {slack: '#low'}\n")
        assert rules.escalation_for(Severity.SEV4).slack_channel == "#low"
        assert rules.escalation_for(Severity.SEV1).pagerduty == "critical"

    def test_a_section_left_empty_is_omitted(self) -> None:
        assert parse_rules("remediations:\n  # none yet\n").remediations == ()

    def test_explicitly_empty_severity_rules_classify_everything_as_default(self) -> None:
        rules = parse_rules("severity: {default: SEV4, rules: []}")
        assert rules.classify({"severity": "critical"}) is Severity.SEV4


class TestTypedValues:
    def test_interface_example_reads_as_typed_values(self) -> None:
        rules = parse_rules(INTERFACE_EXAMPLE)
        maintenance = rules.maintenance
        assert maintenance.retention == timedelta(days=90)
        assert maintenance.stale_after == timedelta(hours=24)
        assert maintenance.reopen_window == timedelta(minutes=30)
        assert maintenance.flapping.transitions == 4
        assert maintenance.flapping.within == timedelta(hours=1)
        assert maintenance.log_rotation.compress_after == timedelta(days=1)
        assert maintenance.backup.schedule == "0 2 * * *"
        assert maintenance.backup.crontab_fields == {
            "minute": "0",
            "hour": "2",
            "day_of_month": "*",
            "month_of_year": "*",
            "day_of_week": "*",
        }
        assert maintenance.backup.max_age == timedelta(hours=26)
        assert maintenance.watchdog is not None
        assert maintenance.watchdog.max_silence == timedelta(minutes=10)
        assert maintenance.watchdog.severity is Severity.SEV1

    def test_remediation_reads_as_typed_values(self) -> None:
        (restart,) = parse_rules(INTERFACE_EXAMPLE).remediations
        assert isinstance(restart, HttpRemediation)
        assert restart.matchers == tuple(parse_matchers('alertname="HighErrorRate", service="api"'))
        assert restart.with_.method == "POST"
        assert restart.with_.timeout == timedelta(seconds=10)
        assert restart.retry.attempts == 4
        assert restart.retry.max_backoff == timedelta(seconds=60)
        assert restart.circuit_breaker.reset_after == timedelta(minutes=5)
        assert restart.on_failure == "escalate"

    def test_extra_action_settings_are_kept_for_the_action(self) -> None:
        rules = parse_rules(REMEDIATION + "      team: {name: sre}\n")
        assert rules.remediations[0].with_.model_extra == {"team": {"name": "sre"}}

    def test_http_headers_and_body(self) -> None:
        rules = parse_rules(
            REMEDIATION
            + "      headers: {Authorization: 'Bearer {env.DEPLOY_TOKEN}', X-Service: '{labels.service}'}\n"
            + "      body: {service: '{labels.service}', count: 2, tags: [a, '{{b}}'], none: null}\n"
        )
        settings = rules.remediations[0].with_
        assert settings.headers == {
            "Authorization": "Bearer {env.DEPLOY_TOKEN}",
            "X-Service": "{labels.service}",
        }
        assert settings.body == {
            "service": "{labels.service}",
            "count": 2,
            "tags": ["a", "{{b}}"],
            "none": None,
        }
        assert settings.has_body

    def test_a_body_may_be_null_which_differs_from_absent(self) -> None:
        assert parse_rules(REMEDIATION + "      body: null\n").remediations[0].with_.has_body
        assert not parse_rules(REMEDIATION).remediations[0].with_.has_body

    def test_command_env_and_cwd(self) -> None:
        rules = parse_rules(
            dedent(
                """\
                remediations:
                  - name: scale
                    matchers: ['alertname="Saturated"']
                    action: command
                    with:
                      argv: [kubectl, scale, "deploy/{labels.service}", --replicas=4]
                      env: {KUBECONFIG: /etc/kube/config, TOKEN: "{env.KUBE_TOKEN}"}
                      cwd: /srv/ops
                      timeout: 1h
                """
            )
        )
        settings = rules.remediations[0].with_
        assert settings.env == {"KUBECONFIG": "/etc/kube/config", "TOKEN": "{env.KUBE_TOKEN}"}
        assert settings.cwd == "/srv/ops"
        assert settings.timeout == timedelta(hours=1)

    def test_run_on_reopen(self) -> None:
        assert parse_rules(REMEDIATION).remediations[0].run_on_reopen is False
        text = REMEDIATION.replace(
            "    action: http\n", "    action: http\n    run_on_reopen: true\n"
        )
        assert parse_rules(text).remediations[0].run_on_reopen is True

    def test_command_and_python_actions(self) -> None:
        rules = parse_rules(
            dedent(
                """\
                remediations:
                  - name: scale
                    matchers: ['alertname="Saturated"']
                    action: command
                    with: {argv: [kubectl, scale, deploy/api, --replicas=4]}
                  - name: flush
                    matchers: ['alertname="CacheFull"']
                    action: python
                    with: {function: flush_cache}
                """
            )
        )
        scale, flush = rules.remediations
        assert scale.with_.argv == ("kubectl", "scale", "deploy/api", "--replicas=4")
        assert flush.with_.function == "flush_cache"

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("10s", timedelta(seconds=10)),
            ("5m", timedelta(minutes=5)),
            ("1h30m", timedelta(hours=1, minutes=30)),
            ("90d", timedelta(days=90)),
            ("1d", timedelta(days=1)),
            ("2w", timedelta(weeks=2)),
            ("1m30s500ms", timedelta(minutes=1, seconds=30, milliseconds=500)),
        ],
    )
    def test_durations(self, text: str, expected: timedelta) -> None:
        assert parse_rules(f"maintenance: {{retention: {text}}}").maintenance.retention == expected

    @pytest.mark.parametrize(
        ("text", "expected"),
        [("100MiB", 100 * 2**20), ("1GiB", 2**30), ("512KiB", 512 * 1024), ("500MB", 500 * 10**6),
         ("4096B", 4096), ("2 gib", 2 * 2**30)],
    )
    def test_log_rotation_max_size(self, text: str, expected: int) -> None:
        rules = parse_rules(f"maintenance: {{log_rotation: {{max_size: {text}}}}}")
        assert rules.maintenance.log_rotation.max_size == expected

    def test_log_rotation_max_size_defaults_to_100_mib(self) -> None:
        assert load_rules(None).maintenance.log_rotation.max_size == 100 * 2**20

    def test_rules_are_immutable(self) -> None:
        rules = load_rules(None)
        with pytest.raises(ValueError, match="frozen"):
            rules.severity = rules.severity  # type: ignore[misc]
        assert isinstance(rules.severity.rules, tuple)


class TestErrorsNameTheLine:
    def test_bad_severity_value(self) -> None:
        error = rules_error(
            """\
            severity:
              rules:
                - matchers: ['severity="critical"']
                  severity: SEV5
            """
        )
        assert error.line == 4
        assert_reported(error, 4, "severity.rules[0].severity", "one of 'SEV1'.*got 'SEV5'")

    def test_unknown_top_level_key_suggests_the_right_one(self) -> None:
        error = rules_error("serverity:\n  default: SEV1\n")
        assert_reported(error, 1, "serverity", "unknown key 'serverity'; did you mean 'severity'")

    def test_unknown_nested_key(self) -> None:
        error = rules_error(REMEDIATION + "    retry: {attempts: 3, backof: 1s}\n")
        assert_reported(error, 7, "remediations[0].retry.backof", "did you mean 'backoff'")

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ("0", "needs a unit"),
            ("0s", "must be positive"),
            ("-5m", "must be positive"),
            ("5 minutes", "invalid duration"),
            ("30m1h", "invalid duration"),
            ("soon", "invalid duration"),
        ],
    )
    def test_bad_duration(self, value: str, message: str) -> None:
        error = rules_error(f"maintenance:\n  flapping:\n    within: {value}\n")
        assert_reported(error, 3, "maintenance.flapping.within", message)

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ("100", "a size needs a unit"),
            ("0MiB", "a size must be positive"),
            ("100M", "invalid size '100M'"),
            ("-5MiB", "invalid size"),
            ("lots", "invalid size 'lots'"),
            ("1.5GiB", "invalid size"),
        ],
    )
    def test_bad_log_size(self, value: str, message: str) -> None:
        error = rules_error(f"maintenance:\n  log_rotation:\n    every: 1h\n    max_size: {value}\n")
        assert_reported(error, 4, "maintenance.log_rotation.max_size", message)

    def test_bad_regex_names_the_matcher_and_its_list_item(self) -> None:
        error = rules_error(
            """\
            severity:
              rules:
                - matchers:
                    - 'env="prod"'
                    - 'severity=~"crit(ical"'
                  severity: SEV1
            """
        )
        assert_reported(
            error,
            5,
            "severity.rules[0].matchers[1]",
            re.escape("""'severity=~"crit(ical"'""") + ".*regular expression",
        )

    def test_duplicate_remediation_name(self) -> None:
        error = rules_error(REMEDIATION + REMEDIATION.removeprefix("remediations:\n"))
        assert_reported(
            error, 7, "remediations[1].name", "duplicate remediation name 'restart-api'"
        )

    def test_missing_required_key_points_at_its_mapping(self) -> None:
        error = rules_error(
            """\
            remediations:
              - name: restart-api
                action: http
                with: {url: "http://deployer.internal/restart"}
            """
        )
        assert_reported(error, 2, "remediations[0].matchers", "required")

    def test_duplicate_yaml_key(self) -> None:
        error = rules_error("maintenance:\n  retention: 30d\n  retention: 60d\n")
        assert_reported(error, 3, "maintenance.retention", r"duplicate key \(first at line 2\)")

    def test_yaml_syntax_error(self) -> None:
        error = rules_error("severity:\n  default: SEV1\n  rules: [\n    {matchers: [a=b]\n")
        assert error.line == 5
        assert str(error).startswith("rules.yaml:5: invalid YAML")

    def test_every_problem_is_reported_in_file_order(self) -> None:
        error = rules_error(
            """\
            maintenance:
              retention: forever
            severity:
              default: SEV0
            """
        )
        assert error.line == 2
        assert str(error).splitlines() == [
            (
                "rules.yaml:2: maintenance.retention: invalid duration 'forever': write whole "
                "numbers with units w, d, h, m, s or ms, largest first (e.g. 30s, 5m, 1h30m, 90d)"
            ),
            (
                "rules.yaml:4: severity.default: must be one of 'SEV1', 'SEV2', 'SEV3' or 'SEV4', "
                "got 'SEV0'"
            ),
        ]

    def test_unknown_action(self) -> None:
        error = rules_error(REMEDIATION.replace("action: http", "action: shell"))
        assert_reported(error, 4, "remediations[0].action", "one of 'http', 'command', 'python'")

    @pytest.mark.parametrize(
        ("setting", "field", "message"),
        [
            ("on_failure: panic", "on_failure", "one of 'escalate', 'notify' or 'ignore'"),
            ("retry: {attempts: 0}", "retry.attempts", "greater than or equal to 1"),
            ("retry: {attempts: '3'}", "retry.attempts", "valid integer"),
            (
                "circuit_breaker: {failure_threshold: 0}",
                "circuit_breaker.failure_threshold",
                "greater than or equal to 1",
            ),
            ("retry: {backoff: 1m, max_backoff: 10s}", "retry.max_backoff", "not be shorter"),
            ("name: Restart API", "name", "letter or digit"),
        ],
    )
    def test_remediation_fields(self, setting: str, field: str, message: str) -> None:
        text = REMEDIATION.replace("    action: http\n", f"    action: http\n    {setting}\n")
        if setting.startswith("name:"):
            text = REMEDIATION.replace("name: restart-api", setting)
        line = 2 if setting.startswith("name:") else 5
        assert_reported(rules_error(text), line, f"remediations[0].{field}", message)

    @pytest.mark.parametrize(
        ("action", "settings", "field", "message"),
        [
            ("http", "{method: POST}", "with.url", "required"),
            ("http", "{url: 'http://{labels.host}/restart'}", "with.url", "host of url"),
            ("http", "{url: 'ftp://example.org/'}", "with.url", "http:// or https://"),
            ("command", "{argv: 'systemctl restart api'}", "with.argv", "must be a list"),
            ("command", "{argv: []}", "with.argv", "at least 1"),
            ("command", "{argv: [echo, 3]}", "with.argv[1]", "string"),
            ("python", "{}", "with.function", "required"),
            ("http", "{url: 'http://a/{labels.x-y}'}", "with.url", "'x-y' is not a valid label"),
            ("http", "{url: 'http://a/{incident.status}'}", "with.url", "unknown placeholder"),
            ("http", "{url: 'http://a/{labels.x'}", "with.url", "unbalanced '{'"),
            ("http", "{url: 'http://a/?t={env.TOKEN}'}", "with.url", "only in http headers"),
            ("http", "{url: 'http://a/', timeout: 2h}", "with.timeout", "at most 1h, got 2h"),
            ("http", "{url: 'http://a/', headers: {Host: b}}", "with.headers.Host", "set by"),
            ("http", "{url: 'http://a/', headers: {'X Y': b}}", "with.headers.X Y", "header name"),
            ("http", "{url: 'http://a/', headers: {X-N: 5}}", "with.headers.X-N", "string"),
            ("http", "{url: 'http://a/', headers: {X: '{env.}'}}", "with.headers.X", "variable"),
            ("http", "{url: 'http://a/', body: {a: '{env.T}'}}", "with.body.a", "only in http"),
            ("http", "{url: 'http://a/', body: [1, '{x}']}", "with.body[1]", "unknown placeholder"),
            ("http", "{url: 'http://a/', body: {d: 2024-05-01}}", "with.body.d", "JSON values"),
            ("command", "{argv: ['{labels.cmd}', x]}", "with.argv[0]", "must be fixed"),
            ("command", "{argv: [echo, '{env.HOME}']}", "with.argv[1]", "only in http headers"),
            ("command", "{argv: [echo], env: {1X: a}}", "with.env.1X", "variable name"),
            ("command", "{argv: [echo], env: {X: '{labels}'}}", "with.env.X", "unknown placeh"),
            ("command", "{argv: [echo], cwd: tmp}", "with.cwd", "absolute path"),
            ("command", "{argv: [echo], timeout: 61m}", "with.timeout", "at most 1h"),
            ("python", "{function: f, timeout: 1d}", "with.timeout", "at most 1h"),
        ],
    )
    def test_action_settings(self, action: str, settings: str, field: str, message: str) -> None:
        error = rules_error(
            f"remediations:\n  - name: fix\n    matchers: ['a=\"b\"']\n"
            f"    action: {action}\n    with: {settings}\n"
        )
        assert_reported(error, 5, f"remediations[0].{field}", message)

    @pytest.mark.parametrize(
        ("policy", "field", "message"),
        [
            ("{pagerduty: urgent}", "SEV2.pagerduty", "'critical', 'error', 'warning' or 'info'"),
            ("{slack: 5}", "SEV2.slack", "boolean or a valid string"),
            ("{repeat: 2}", "SEV2.repeat", "needs ack_timeout"),
            ("{escalate_after: 1h}", "SEV2.escalate_to", "go together"),
            ("{escalate_after: 1h, escalate_to: SEV3}", "SEV2.escalate_to", "worse severity"),
            ("{slack: false, channel: '#ops'}", "SEV2.channel", "slack is false"),
            ("{pager: critical}", "SEV2.pager", "did you mean 'pagerduty'"),
        ],
    )
    def test_escalation_fields(self, policy: str, field: str, message: str) -> None:
        error = rules_error(f"escalation:\n  SEV2: {policy}\n")
        assert_reported(error, 2, f"escalation.{field}", message)

    def test_unknown_severity_in_escalation(self) -> None:
        assert_reported(rules_error("escalation:\n  SEV5: {}\n"), 2, "escalation.SEV5", "SEV4")

    def test_template_errors_name_the_line_in_a_block(self) -> None:
        error = rules_error(
            """\
            remediations:
              - name: restart-api
                matchers: ['service="api"']
                action: http
                with:
                  url: "http://deployer.internal/restart"
                  headers:
                    X-Service: "{labels.service}"
                    X-Token: "{secret.TOKEN}"
                  body:
                    service: "{labels.service}"
                    why: "{incident.tittle}"
            """
        )
        assert str(error).splitlines() == [
            "rules.yaml:9: remediations[0].with.headers.X-Token: unknown placeholder "
            "{secret.TOKEN} in '{secret.TOKEN}': use {labels.NAME}, {incident.key}, "
            "{incident.id}, {incident.severity}, {incident.title}, {incident.url}, "
            "{remediation.name}",
            "rules.yaml:12: remediations[0].with.body.why: unknown placeholder "
            "{incident.tittle} in '{incident.tittle}': use {labels.NAME}, {incident.key}, "
            "{incident.id}, {incident.severity}, {incident.title}, {incident.url}, "
            "{remediation.name}",
        ]

    def test_circuit_breaker_key_is_a_template(self) -> None:
        text = REMEDIATION.replace(
            "    action: http\n",
            "    action: http\n    circuit_breaker: {key: '{labels.cluster'}\n",
        )
        assert_reported(rules_error(text), 5, "remediations[0].circuit_breaker.key", "unbalanced")

    @pytest.mark.parametrize(
        ("schedule", "message"),
        [
            ("0 2 * *", "must have 5 fields"),
            ("@daily", "must have 5 fields"),
            ("60 2 * * *", "minute must be 0-59"),
            ("0 2 * * 7", "day_of_week must be 0-6"),
            ("0 2 * * fri-mon", "backwards range"),
            ("*/0 * * * *", "zero step"),
        ],
    )
    def test_backup_schedule(self, schedule: str, message: str) -> None:
        error = rules_error(f"maintenance:\n  backup:\n    schedule: '{schedule}'\n")
        assert_reported(error, 3, "maintenance.backup.schedule", message)

    def test_good_backup_schedules(self) -> None:
        for schedule in ("*/15 * * * *", "0 2 1,15 jan-jun mon-fri", "30 3 * * sun"):
            rules = parse_rules(f"maintenance: {{backup: {{schedule: '{schedule}'}}}}")
            assert rules.maintenance.backup.schedule == schedule

    @pytest.mark.parametrize(
        ("maintenance", "field", "message"),
        [
            ("flapping: {transitions: 1}", "flapping.transitions", "greater than or equal to 2"),
            ("backup: {keep: 0}", "backup.keep", "greater than or equal to 1"),
            ("backup: {verify: checksum}", "backup.verify", "'restore' or 'list'"),
            (
                "log_rotation: {compress_after: 7d, delete_after: 1d}",
                "log_rotation.delete_after",
                "not be shorter",
            ),
            ("watchdog: {severity: SEV0}", "watchdog.severity", "one of"),
        ],
    )
    def test_maintenance_fields(self, maintenance: str, field: str, message: str) -> None:
        error = rules_error(f"maintenance:\n  {maintenance}\n")
        assert_reported(error, 2, f"maintenance.{field}", message)

    def test_watchdog_takes_defaults_when_present_and_is_off_when_absent(self) -> None:
        assert parse_rules("maintenance: {}").maintenance.watchdog is None
        watchdog = parse_rules("maintenance: {watchdog: {}}").maintenance.watchdog
        assert watchdog is not None
        assert watchdog.alertname == "Watchdog"

    def test_top_level_must_be_a_mapping(self) -> None:
        assert_reported(rules_error("- SEV1\n"), 1, "(top level)", "must be a mapping")


class TestFiles:
    def test_load_from_file(self, tmp_path: Path) -> None:
        path = tmp_path / "rules.yaml"
        path.write_text(INTERFACE_EXAMPLE)
        assert load_rules(path) == parse_rules(INTERFACE_EXAMPLE)

    def test_errors_name_the_file(self, tmp_path: Path) -> None:
        path = tmp_path / "rules.yaml"
        path.write_text("severity:\n  default: SEV9\n")
        with pytest.raises(RulesError, match=rf"^{re.escape(str(path))}:2: severity.default: "):
            load_rules(path)

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(RulesError, match="no such rules file") as raised:
            load_rules(tmp_path / "absent.yaml")
        assert raised.value.line is None

    def test_not_utf8(self, tmp_path: Path) -> None:
        path = tmp_path / "rules.yaml"
        path.write_bytes(b"severity: {default: \xff}\n")
        with pytest.raises(RulesError, match="not UTF-8"):
            load_rules(path)

    def test_rules_type_is_exported(self) -> None:
        assert isinstance(load_rules(None), Rules)
