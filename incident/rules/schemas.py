"""The whole rules file as one immutable model, with the questions asked of it.

Every matcher is compiled while the file is validated, so ``classify``, which
runs for every alert, only walks tuples of ready predicates.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, model_validator

from incident.rules.escalation import Escalation, EscalationPolicy
from incident.rules.maintenance import Maintenance
from incident.rules.matchers import matches_all
from incident.rules.remediations import AnyRemediation, RemediationRule, check_unique_names
from incident.rules.routes import Destinations, Route, choose_destinations
from incident.rules.schema_types import NonEmptyStr, MatcherList, StrictModel
from incident.rules.severity import Severity

if TYPE_CHECKING:
    from incident.alerts.schemas import WebhookPayload


SEVERITY_LABEL = "incident_severity"
_SEVERITIES = frozenset(Severity)


class SeverityRule(StrictModel):
    matchers: MatcherList
    severity: Severity
    # Slack channel for incidents this rule classifies, over the severity's own.
    channel: NonEmptyStr | None = None


def _default_severity_rules() -> tuple[SeverityRule, ...]:
    return tuple(
        SeverityRule.model_validate({"matchers": matchers, "severity": severity})
        for matchers, severity in (
            (['severity="critical"', 'env="prod"'], "SEV1"),
            (['severity="critical"'], "SEV2"),
            (['severity=~"warning|error"'], "SEV3"),
            (['severity=~"info|none"'], "SEV4"),
        )
    )


class SeverityRules(StrictModel):
    default: Severity = Severity.SEV3
    # First match wins.
    rules: tuple[SeverityRule, ...] = Field(default_factory=_default_severity_rules)


SlackUserId = Annotated[str, Field(pattern=r"^[UW][A-Z0-9]{2,40}$")]


class SlackActions(StrictModel):
    # Who may use the buttons on Slack messages: Slack user ids; unset, anyone who sees them.
    allowed_users: tuple[SlackUserId, ...] | None = None

    def allows(self, user_id: str) -> bool:
        return self.allowed_users is None or user_id in self.allowed_users


class Rules(StrictModel):
    """A validated rules file; sections the file omits take the built-in defaults."""

    severity: SeverityRules = Field(default_factory=SeverityRules)
    remediations: tuple[AnyRemediation, ...] = ()
    escalation: Escalation = Field(default_factory=Escalation)
    maintenance: Maintenance = Field(default_factory=Maintenance)
    slack: SlackActions = Field(default_factory=SlackActions)
    # First match wins, unless a route says `continue: true`.
    routes: tuple[Route, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _empty_section_is_omitted(cls, data: Any) -> Any:
        # `remediations:` with every entry commented out reads as null.
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data

    @model_validator(mode="after")
    def _unique_remediation_names(self) -> Rules:
        check_unique_names(self.remediations)
        return self

    def classify(self, labels: Mapping[str, str]) -> Severity:
        """An explicit ``incident_severity`` label, else the first matching rule's, else the default.

        The label lets an alerting rule (and incident's own internal alerts)
        state a severity without a rule here for every alert.
        """
        explicit = labels.get(SEVERITY_LABEL)
        if explicit in _SEVERITIES:
            return Severity(explicit)
        for rule in self.severity.rules:
            if matches_all(rule.matchers, labels):
                return rule.severity
        return self.severity.default

    def incident_severity(self, payload: WebhookPayload) -> Severity:
        """The severity an incident opens (or reopens) with for this notification.

        The worst of the firing alerts; with none firing, the group's common
        labels stand in, so the answer is never empty.
        """
        firing = [self.classify(alert.labels) for alert in payload.alerts if alert.firing]
        return Severity.worst(firing) or self.classify(payload.common_labels)

    def slack_channel_for(self, labels: Mapping[str, str]) -> str | None:
        """The channel of the first matching severity rule, when that rule names one."""
        for rule in self.severity.rules:
            if matches_all(rule.matchers, labels):
                return rule.channel
        return None

    def destinations_for(self, labels: Mapping[str, str]) -> Destinations:
        """Where an incident with these labels is told, from the matching routes."""
        return choose_destinations(self.routes, labels)

    def matching_remediations(self, labels: Mapping[str, str]) -> list[RemediationRule]:
        """Every remediation whose matchers all match, in file order."""
        return [each for each in self.remediations if matches_all(each.matchers, labels)]

    def escalation_for(self, severity: Severity) -> EscalationPolicy:
        return self.escalation.policy_for(severity)
