"""The ``escalation:`` section: who is told about an incident of each severity."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictBool, model_validator

from incident.rules.schema_types import Duration, NonEmptyStr, StrictModel, rule_error
from incident.rules.severity import Severity

PagerDutySeverity = Literal["critical", "error", "warning", "info"]


class EscalationPolicy(StrictModel):
    """What happens for one severity. Omitted fields mean "no": nobody is told implicitly."""

    pagerduty: PagerDutySeverity | None = None
    # `true` posts to the default channel; a string posts to that channel.
    slack: StrictBool | NonEmptyStr = False
    channel: NonEmptyStr | None = None
    # Mail to the recipients (INCIDENT_EMAIL_TO) when it opens, escalates and resolves.
    email: StrictBool = False
    ack_timeout: Duration | None = None
    repeat: Annotated[int, Field(strict=True, ge=0)] = 0
    escalate_after: Duration | None = None
    escalate_to: Severity | None = None

    @model_validator(mode="after")
    def _consistent(self) -> EscalationPolicy:
        if self.channel is not None and self.slack is False:
            raise rule_error("channel is set but slack is false", at=("channel",))
        if self.channel is not None and isinstance(self.slack, str):
            raise rule_error(
                "give the Slack channel either as slack or as channel, not both", at=("channel",)
            )
        if self.repeat and self.ack_timeout is None:
            raise rule_error(
                "repeat needs ack_timeout: repeats happen while unacknowledged", at=("repeat",)
            )
        if (self.escalate_after is None) != (self.escalate_to is None):
            missing = "escalate_to" if self.escalate_to is None else "escalate_after"
            raise rule_error("escalate_after and escalate_to go together", at=(missing,))
        return self

    @property
    def slack_enabled(self) -> bool:
        return self.slack is not False

    @property
    def slack_channel(self) -> str | None:
        """The channel to post to; None means the default channel (or Slack off)."""
        if isinstance(self.slack, str):
            return self.slack
        return self.channel


def _default(**fields: object) -> EscalationPolicy:
    return EscalationPolicy.model_validate(fields)


class Escalation(StrictModel):
    """One policy per severity; a severity the file leaves out keeps its built-in policy."""

    SEV1: EscalationPolicy = Field(
        default_factory=lambda: _default(
            pagerduty="critical", slack=True, ack_timeout="5m", repeat=3
        )
    )
    SEV2: EscalationPolicy = Field(
        default_factory=lambda: _default(pagerduty="error", slack=True, ack_timeout="15m")
    )
    SEV3: EscalationPolicy = Field(
        default_factory=lambda: _default(slack=True, escalate_after="1h", escalate_to="SEV2")
    )
    SEV4: EscalationPolicy = Field(default_factory=lambda: _default(slack=True))

    @model_validator(mode="after")
    def _escalate_upwards(self) -> Escalation:
        for severity in Severity:
            target = self.policy_for(severity).escalate_to
            if target is not None and not target.is_worse_than(severity):
                raise rule_error(
                    f"{severity} can only escalate to a worse severity "
                    f"({', '.join(s for s in Severity if s.is_worse_than(severity)) or 'none'}), "
                    f"got {target}",
                    at=(severity.value, "escalate_to"),
                )
        return self

    def policy_for(self, severity: Severity) -> EscalationPolicy:
        return getattr(self, Severity(severity).value)
