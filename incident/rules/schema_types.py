"""The strict base model and the field types every section of the rules file shares."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator
from pydantic_core import PydanticCustomError

from incident.rules.durations import EXAMPLES, parse_duration
from incident.rules.matchers import Matcher, MatcherError, parse_matchers
from incident.rules.sizes import EXAMPLES as SIZE_EXAMPLES
from incident.rules.sizes import parse_size

# The error type the loader recognises; its `at` context extends the error's
# location, for checks that span fields but blame one of them.
RULES_ERROR_TYPE = "rules"


def rule_error(message: str, *, at: tuple[str | int, ...] = ()) -> PydanticCustomError:
    """A validation error whose message is shown as is.

    The message travels in the context rather than the template because
    pydantic formats templates, and messages quote user text with braces in it.
    """
    return PydanticCustomError(RULES_ERROR_TYPE, "{message}", {"message": message, "at": at})


class StrictModel(BaseModel):
    """Unknown keys are errors, so a typo such as ``serverity:`` is reported, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


def _to_duration(value: object) -> timedelta:
    if isinstance(value, timedelta):
        if value <= timedelta(0):
            raise rule_error(f"a duration must be positive, got {value}")
        return value
    if not isinstance(value, str):
        # YAML reads a bare `30` as a number; guessing its unit would be a bug.
        raise rule_error(f"a duration needs a unit ({EXAMPLES}), got {value!r}")
    try:
        return parse_duration(value)
    except ValueError as error:
        raise rule_error(str(error)) from None


Duration = Annotated[timedelta, PlainValidator(_to_duration)]
"""A positive ``timedelta`` written as ``10s``, ``5m``, ``1h30m``, ``90d``."""


def _to_size(value: object) -> int:
    if not isinstance(value, str):
        # As with durations: a bare number has no unit, and guessing bytes
        # would turn a forgotten "MiB" into a rotation every check.
        raise rule_error(f"a size needs a unit ({SIZE_EXAMPLES}), got {value!r}")
    try:
        return parse_size(value)
    except ValueError as error:
        raise rule_error(str(error)) from None


ByteSize = Annotated[int, PlainValidator(_to_size)]
"""A positive number of bytes written as ``512KiB``, ``100MiB``, ``1GiB``, ``500MB``."""


NonEmptyStr = Annotated[str, Field(strict=True, min_length=1)]
PositiveInt = Annotated[int, Field(strict=True, ge=1)]


def _to_matchers(value: object) -> tuple[Matcher, ...]:
    if not isinstance(value, str):
        raise rule_error(f"a matcher is a string such as 'severity=\"critical\"', got {value!r}")
    try:
        matchers = parse_matchers(value)
    except MatcherError as error:
        raise rule_error(str(error)) from None
    if not matchers:
        raise rule_error("empty matcher string")
    return tuple(matchers)


def _flatten(groups: tuple[tuple[Matcher, ...], ...]) -> tuple[Matcher, ...]:
    if not groups:
        raise rule_error("at least one matcher is needed")
    return tuple(matcher for group in groups for matcher in group)


# Each string may hold several comma-separated matchers; they are validated one
# string at a time, so an error points at its list item, then flattened: a rule
# matches when all of them match.
MatcherList = Annotated[
    tuple[Annotated[tuple[Matcher, ...], PlainValidator(_to_matchers)], ...],
    AfterValidator(_flatten),
]
