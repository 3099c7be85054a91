"""Remediation rules and contexts for action tests, validated as a rules file would be."""

from __future__ import annotations

from typing import Any

from incident.remediation.actions import RemediationContext
from incident.rules import RemediationRule, Rules

LABELS = {"alertname": "HighErrorRate", "service": "api"}


def make_rule(action: str, /, *, name: str = "fix", **settings: Any) -> RemediationRule:
    rules = Rules.model_validate(
        {
            "remediations": [
                {"name": name, "matchers": ['alertname="X"'], "action": action, "with": settings}
            ]
        }
    )
    return rules.remediations[0]


def make_context(
    rule: RemediationRule, labels: dict[str, str] | None = None, **fields: Any
) -> RemediationContext:
    given: dict[str, Any] = {
        "incident_id": 42,
        "incident_key": "4f0c2a",
        "title": "HighErrorRate api",
        "severity": "SEV2",
        "status": "triggered",
        "labels": labels if labels is not None else LABELS,
        "url": "http://incident.example/incidents/42",
        "attempt": 1,
    }
    given.update(fields)
    return RemediationContext.create(rule, **given)
