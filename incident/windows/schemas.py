"""A maintenance window as the API takes it and shows it."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from incident.rules.matchers import Matcher, MatcherError, parse_matcher
from incident.windows.models import MaintenanceWindow

LONGEST = timedelta(days=30)
MATCHERS_MAX = 32
COMMENT_MAX = 1000
# RFC 3339 with its offset: no bare dates, no numbers, no local times.
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})"
)


def _rfc3339(value: Any) -> Any:
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValueError("must be an RFC 3339 timestamp with an offset, such as 2026-12-03T22:00:00Z")
    return value


def _utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range") from None


def _matcher(text: str) -> str:
    try:
        return str(parse_matcher(text))
    except MatcherError as exc:
        raise ValueError(str(exc)) from None


Timestamp = Annotated[datetime, BeforeValidator(_rfc3339), AfterValidator(_utc)]
MatcherText = Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_matcher)]


class WindowRequest(BaseModel):
    """``POST /api/maintenance``: matchers in Alertmanager's syntax, when, and why."""

    model_config = ConfigDict(extra="forbid")

    matchers: list[MatcherText] = Field(min_length=1, max_length=MATCHERS_MAX)
    starts_at: Timestamp
    ends_at: Timestamp
    comment: str = Field(min_length=1, max_length=COMMENT_MAX)

    @field_validator("matchers")
    @classmethod
    def _one_selects(cls, matchers: list[str]) -> list[str]:
        # Alertmanager refuses such a silence, and a window over every incident is a mistake.
        if all(parse_matcher(each).matches({}) for each in matchers):
            raise ValueError(
                "at least one matcher must not match an empty or missing label "
                "(Alertmanager refuses a silence otherwise)"
            )
        return matchers

    @field_validator("ends_at")
    @classmethod
    def _ends_in_the_future(cls, ends_at: datetime, info: ValidationInfo) -> datetime:
        if ends_at <= datetime.now(UTC):
            raise ValueError("must be in the future")
        starts_at = info.data.get("starts_at")
        if starts_at is not None:
            if ends_at <= starts_at:
                raise ValueError("must be after starts_at")
            if ends_at - starts_at > LONGEST:
                raise ValueError(f"a window lasts at most {LONGEST.days} days")
        return ends_at

    def parsed_matchers(self) -> list[Matcher]:
        return [parse_matcher(each) for each in self.matchers]


class WindowOut(BaseModel):
    id: int
    matchers: list[str]
    starts_at: datetime
    ends_at: datetime
    ended_at: datetime | None
    comment: str
    created_by: str
    silence_id: str | None
    active: bool

    @classmethod
    def of(cls, window: MaintenanceWindow, now: datetime) -> WindowOut:
        return cls(
            id=window.id, matchers=window.matchers, starts_at=window.starts_at,
            ends_at=window.ends_at, ended_at=window.ended_at, comment=window.comment,
            created_by=window.created_by, silence_id=window.silence_id, active=window.active(now),
        )


class WindowList(BaseModel):
    items: list[WindowOut]
