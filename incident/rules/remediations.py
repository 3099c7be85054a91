"""The ``remediations:`` section: what to run when an incident opens.

Each entry's ``with:`` block is checked per action only for what that action
cannot do without; further keys are kept (``model_extra``) for the action to
read, since the remediation engine owns their meaning.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, ConfigDict, Field, field_validator, model_validator

from incident.rules.durations import format_duration
from incident.rules.matchers import matches_all
from incident.rules.schema_types import (
    Duration,
    MatcherList,
    NonEmptyStr,
    PositiveInt,
    StrictModel,
    rule_error,
)
from incident.rules.templates import (
    ENV_NAME,
    TemplateError,
    check_template,
    has_placeholders,
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


# An attempt holds a worker process (and the breaker's half-open trial lease)
# for up to this long; anything longer belongs in a job system of its own.
MAX_ACTION_TIMEOUT = timedelta(hours=1)

# RFC 9110 token characters.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# The client sets these from the URL and the body; a rule setting them could
# send the request to another virtual host or desynchronise the connection.
_CLIENT_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})


def _at_most_an_hour(timeout: timedelta) -> timedelta:
    if timeout > MAX_ACTION_TIMEOUT:
        raise rule_error(f"timeout must be at most 1h, got {format_duration(timeout)}")
    return timeout


ActionTimeout = Annotated[Duration, AfterValidator(_at_most_an_hour)]


def _template_checker(*, allow_env: bool) -> Callable[[str], str]:
    def check(text: str) -> str:
        try:
            return check_template(text, allow_env=allow_env)
        except TemplateError as error:
            raise rule_error(str(error)) from None

    return check


# `{env.NAME}` only where the value is neither logged nor shown: headers and a command's env.
Template = Annotated[str, Field(strict=True), AfterValidator(_template_checker(allow_env=False))]
SecretTemplate = Annotated[
    str, Field(strict=True), AfterValidator(_template_checker(allow_env=True))
]


def _check_env_name(name: str) -> str:
    if not ENV_NAME.fullmatch(name):
        raise rule_error(f"{name!r} is not a valid environment variable name")
    return name


def _check_header_name(name: str) -> str:
    if not _HEADER_NAME.fullmatch(name):
        raise rule_error(f"{name!r} is not a valid HTTP header name")
    if name.lower() in _CLIENT_HEADERS:
        raise rule_error(f"header {name!r} is set by the client from the url and body")
    return name


EnvName = Annotated[str, Field(strict=True), AfterValidator(_check_env_name)]
HeaderName = Annotated[str, Field(strict=True), AfterValidator(_check_header_name)]


class CircuitBreakerPolicy(StrictModel):
    """Opens after ``failure_threshold`` consecutive failures, shared by every worker."""

    failure_threshold: PositiveInt = 3
    reset_after: Duration = timedelta(minutes=5)
    # A template such as "{labels.cluster}": one breaker per rendered value.
    # None: one breaker per remediation name.
    key: Annotated[NonEmptyStr, AfterValidator(_template_checker(allow_env=False))] | None = None


class _ActionSettings(StrictModel):
    model_config = ConfigDict(extra="allow")

    # None: the remediation engine's default.
    timeout: ActionTimeout | None = None


class HttpActionSettings(_ActionSettings):
    url: Annotated[NonEmptyStr, AfterValidator(_template_checker(allow_env=False))]
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    headers: dict[HeaderName, SecretTemplate] = Field(default_factory=dict)
    # Any JSON value, its strings templates. Absent: a JSON summary of the
    # incident for methods that carry a body; null: no body at all.
    body: Any = None

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

    @field_validator("body")
    @classmethod
    def _body_is_json(cls, body: Any) -> Any:
        _check_json(body, ())
        return body

    @property
    def has_body(self) -> bool:
        """Whether the rule wrote ``body:``, even as null."""
        return "body" in self.model_fields_set


def _check_json(value: Any, at: tuple[str | int, ...]) -> None:
    if isinstance(value, str):
        try:
            check_template(value)
        except TemplateError as error:
            raise rule_error(str(error), at=at) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise rule_error(f"a JSON object key must be a string, got {key!r}", at=at)
            _check_json(item, (*at, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json(item, (*at, index))
    elif not (value is None or isinstance(value, bool | int | float)):
        # YAML reads 2024-05-01 as a date, which JSON has no type for.
        raise rule_error(
            f"body must hold JSON values only, got {type(value).__name__} {value!r}; quote it",
            at=at,
        )


class CommandActionSettings(_ActionSettings):
    # An argv list and never a shell string, so label values cannot inject commands.
    argv: Annotated[tuple[Template, ...], Field(min_length=1)]
    # The command's environment besides the few variables it always gets; the
    # worker's own environment holds secrets and is not passed on.
    env: dict[EnvName, SecretTemplate] = Field(default_factory=dict)
    cwd: NonEmptyStr | None = None

    @field_validator("argv")
    @classmethod
    def _program_is_fixed(cls, argv: tuple[str, ...]) -> tuple[str, ...]:
        # As with a URL's host: a label may fill arguments, never choose the program.
        if has_placeholders(argv[0]):
            raise rule_error(
                f"the program, argv[0], must be fixed, not a placeholder: {argv[0]!r}", at=(0,)
            )
        return argv

    @field_validator("cwd")
    @classmethod
    def _cwd_is_absolute(cls, cwd: str | None) -> str | None:
        # A relative directory would depend on where the worker was started.
        if cwd is not None and not cwd.startswith("/"):
            raise rule_error(f"cwd must be an absolute path, got {cwd!r}")
        return cwd


class PythonActionSettings(_ActionSettings):
    # The name of an entry point in the `incident.remediations` group. Whether
    # it is installed is checked by `incident rules check`, not here: every
    # process loads the rules, and a receiver without the plugin installed
    # must still accept alerts.
    function: NonEmptyStr


class RemediationRule(StrictModel):
    """One entry of ``remediations:``; the subclasses fix ``action`` and ``with``."""

    name: Annotated[str, Field(strict=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    matchers: MatcherList
    action: ActionName
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    circuit_breaker: CircuitBreakerPolicy = Field(default_factory=CircuitBreakerPolicy)
    on_failure: Literal["escalate", "notify", "ignore"] = "notify"
    # Whether it runs again when its incident reopens, or only at the first opening.
    run_on_reopen: Annotated[bool, Field(strict=True)] = False
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
    "MAX_ACTION_TIMEOUT",
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
