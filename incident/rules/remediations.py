"""The ``remediations:`` section: what to run when an incident opens.

Each entry's ``with:`` block is checked per action only for what that action
cannot do without; further keys are kept (``model_extra``) for the action to
read, since the remediation engine owns their meaning.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import ConfigDict, Field, field_validator, model_validator

from incident.rules.matchers import matches_all
from incident.rules.schema_types import (
    Duration,
    MatcherList,
    NonEmptyStr,
    PositiveInt,
    StrictModel,
    rule_error,
)

ActionName = Literal["http", "command", "python"]
ACTIONS: tuple[str, ...] = ("http", "command", "python")


class RetryPolicy(StrictModel):
    """``attempts`` counts every try, the first included; backoff doubles, with jitter."""

    attempts: PositiveInt = 1
    backoff: Duration = timedelta(seconds=2)
    max_backoff: Duration = timedelta(seconds=60)

    @model_validator(mode="after")
    def _backoff_within_cap(self) -> RetryPolicy:
        if self.max_backoff < self.backoff:
            raise rule_error("max_backoff must not be shorter than backoff", at=("max_backoff",))
        return self


class CircuitBreakerPolicy(StrictModel):
    """Opens after ``failure_threshold`` consecutive failures, shared by every worker."""

    failure_threshold: PositiveInt = 3
    reset_after: Duration = timedelta(minutes=5)
    # None: one breaker per remediation name.
    key: NonEmptyStr | None = None


class _ActionSettings(StrictModel):
    model_config = ConfigDict(extra="allow")


class HttpActionSettings(_ActionSettings):
    url: NonEmptyStr
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    # None: the remediation engine's default.
    timeout: Duration | None = None

    @field_validator("url")
    @classmethod
    def _host_is_fixed(cls, url: str) -> str:
        # Label values may only fill the path or query: a label must never be
        # able to choose which host receives the request.
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise rule_error(f"url must be an absolute http:// or https:// URL, got {url!r}")
        if "{" in parts.netloc or "}" in parts.netloc:
            raise rule_error(f"the host of url must be fixed, not a placeholder: {parts.netloc!r}")
        return url


class CommandActionSettings(_ActionSettings):
    # An argv list and never a shell string, so label values cannot inject commands.
    argv: Annotated[tuple[Annotated[str, Field(strict=True)], ...], Field(min_length=1)]
    timeout: Duration | None = None


class PythonActionSettings(_ActionSettings):
    # The name of an entry point in the `incident.remediations` group.
    function: NonEmptyStr


class RemediationRule(StrictModel):
    """One entry of ``remediations:``; the subclasses fix ``action`` and ``with``."""

    name: Annotated[str, Field(strict=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    matchers: MatcherList
    action: ActionName
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    circuit_breaker: CircuitBreakerPolicy = Field(default_factory=CircuitBreakerPolicy)
    on_failure: Literal["escalate", "notify", "ignore"] = "notify"
    with_: _ActionSettings = Field(alias="with")

    def matches(self, labels: Mapping[str, str]) -> bool:
        return matches_all(self.matchers, labels)

    @property
    def matcher_texts(self) -> list[str]:
        return [str(matcher) for matcher in self.matchers]


class HttpRemediation(RemediationRule):
    action: Literal["http"]
    with_: HttpActionSettings = Field(alias="with")


class CommandRemediation(RemediationRule):
    action: Literal["command"]
    with_: CommandActionSettings = Field(alias="with")


class PythonRemediation(RemediationRule):
    action: Literal["python"]
    with_: PythonActionSettings = Field(alias="with")


AnyRemediation = Annotated[
    HttpRemediation | CommandRemediation | PythonRemediation, Field(discriminator="action")
]


def check_unique_names(remediations: tuple[RemediationRule, ...]) -> None:
    first_index: dict[str, int] = {}
    for index, remediation in enumerate(remediations):
        if remediation.name in first_index:
            raise rule_error(
                f"duplicate remediation name {remediation.name!r} "
                f"(also remediations[{first_index[remediation.name]}])",
                at=("remediations", index, "name"),
            )
        first_index[remediation.name] = index


__all__ = [
    "ACTIONS",
    "AnyRemediation",
    "CircuitBreakerPolicy",
    "CommandActionSettings",
    "CommandRemediation",
    "HttpActionSettings",
    "HttpRemediation",
    "PythonActionSettings",
    "PythonRemediation",
    "RemediationRule",
    "RetryPolicy",
    "check_unique_names",
]
