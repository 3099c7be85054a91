"""Asking the rules about labels: severity, remediations, escalation."""

from __future__ import annotations

import pickle
from datetime import timedelta
from textwrap import dedent

import pytest

from incident.rules import Rules, Severity, load_rules, parse_rules

RULES = dedent(
    """\
    severity:
      default: SEV4
      rules:
        - matchers: ['severity="critical", env="prod"']
          severity: SEV1
        - matchers: ['severity="critical"']
          severity: SEV2
        - matchers: ['team!="payments"', 'severity="warning"']
          severity: SEV3
    remediations:
      - name: restart-api
        matchers: ['alertname="HighErrorRate"', 'service="api"']
        action: http
        with: {url: "http://deployer.internal/services/{labels.service}/restart"}
      - name: page-dba
        matchers: ['alertname=~"Postgres.*"']
        action: python
        with: {function: page_dba}
      - name: any-api
        matchers: ['service="api"']
        action: command
        with: {argv: [echo, api]}
    escalation:
      SEV3: {slack: "#ops", escalate_after: 2h, escalate_to: SEV1}
    """
)


@pytest.fixture(scope="module")
def rules() -> Rules:
    return parse_rules(RULES)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"severity": "critical", "env": "prod"}, Severity.SEV1),
        ({"severity": "critical", "env": "staging"}, Severity.SEV2),
        ({"severity": "critical"}, Severity.SEV2),
        ({"severity": "warning"}, Severity.SEV3),
        ({"severity": "warning", "team": "payments"}, Severity.SEV4),
        ({"severity": "info"}, Severity.SEV4),
        ({}, Severity.SEV4),
    ],
)
def test_first_matching_rule_wins_else_the_default(
    rules: Rules, labels: dict[str, str], expected: Severity
) -> None:
    assert rules.classify(labels) is expected


def test_earlier_rule_wins_even_when_a_later_one_is_worse() -> None:
    rules = parse_rules(
        "severity:\n  rules:\n"
        "    - {matchers: ['team=\"web\"'], severity: SEV4}\n"
        "    - {matchers: ['severity=\"critical\"'], severity: SEV1}\n"
    )
    assert rules.classify({"team": "web", "severity": "critical"}) is Severity.SEV4


def test_built_in_classification() -> None:
    rules = load_rules(None)
    assert rules.classify({"severity": "critical", "env": "prod"}) is Severity.SEV1
    assert rules.classify({"severity": "critical"}) is Severity.SEV2
    assert rules.classify({"severity": "error"}) is Severity.SEV3
    assert rules.classify({"severity": "none"}) is Severity.SEV4
    assert rules.classify({"severity": "nonesuch"}) is Severity.SEV3
    assert rules.classify({}) is Severity.SEV3


def test_every_matching_remediation_in_file_order(rules: Rules) -> None:
    labels = {"alertname": "HighErrorRate", "service": "api"}
    assert [each.name for each in rules.matching_remediations(labels)] == [
        "restart-api",
        "any-api",
    ]
    assert [each.name for each in rules.matching_remediations({"alertname": "PostgresDown"})] == [
        "page-dba"
    ]
    assert rules.matching_remediations({"alertname": "DiskFull"}) == []


def test_escalation_for_each_severity(rules: Rules) -> None:
    sev3 = rules.escalation_for(Severity.SEV3)
    assert sev3.slack_enabled
    assert sev3.slack_channel == "#ops"
    assert sev3.escalate_after == timedelta(hours=2)
    assert sev3.escalate_to is Severity.SEV1
    sev1 = rules.escalation_for(Severity.SEV1)
    assert (sev1.pagerduty, sev1.ack_timeout, sev1.repeat) == ("critical", timedelta(minutes=5), 3)
    assert sev1.slack_channel is None
    assert not rules.escalation_for(Severity.SEV4).pagerduty


def test_escalation_accepts_the_severity_as_text(rules: Rules) -> None:
    assert rules.escalation_for("SEV3") == rules.escalation_for(Severity.SEV3)  # type: ignore[arg-type]


def test_rules_survive_pickling_with_their_compiled_matchers(rules: Rules) -> None:
    copied = pickle.loads(pickle.dumps(rules))
    assert copied == rules
    assert copied.classify({"severity": "critical", "env": "prod"}) is Severity.SEV1
