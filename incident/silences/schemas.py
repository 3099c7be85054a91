"""What ``POST /api/incidents/{id}/silence`` takes."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from incident.alerts.schemas import Text
from incident.rules.durations import format_duration, parse_duration
from incident.silences.service import (
    DEFAULT_DURATION,
    MAX_DURATION,
    MIN_DURATION,
    check_duration,
)


def _silence_length(text: str) -> str:
    try:
        length = parse_duration(text)
    except OverflowError:
        raise ValueError(f"duration {text!r} is far longer than the longest silence") from None
    check_duration(length)
    return text


Duration = Annotated[
    Text,
    Field(
        max_length=32,
        description=f"how long, {format_duration(MIN_DURATION)} to "
        f"{format_duration(MAX_DURATION)}: 30m, 4h, 1d12h",
        examples=["1h"],
    ),
    AfterValidator(_silence_length),
]


class SilenceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    duration: Duration = format_duration(DEFAULT_DURATION)
    # Shown in Alertmanager before the incident's number and link.
    comment: Text | None = Field(default=None, max_length=2_000)

    @property
    def length(self) -> timedelta:
        return parse_duration(self.duration)
