"""The Alertmanager webhook payload, version 4.

Unknown fields are accepted and ignored (newer Alertmanager releases add some,
such as ``notification_reason``); known fields are strict, so a wrong type is
named in the 422 rather than coerced.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    field_validator,
)


def _no_nul(text: str) -> str:
    # PostgreSQL stores neither a NUL in text nor \u0000 in JSONB: refuse it
    # here, named, rather than lose the notification in the worker.
    if "\x00" in text:
        raise ValueError("must not contain NUL (\\u0000) characters")
    return text


_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def _timestamp_text(value: Any) -> Any:
    # Alertmanager sends RFC 3339 text; a number, or digits in a string, would
    # otherwise be read as Unix time, and a date alone as midnight.
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValueError("must be an RFC 3339 timestamp with an offset, e.g. 2026-11-22T03:00:00Z")
    return value


def _storable(value: datetime) -> datetime:
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is outside the years 1-9999 once converted to UTC") from None
    return value


Text = Annotated[StrictStr, AfterValidator(_no_nul)]
Labels = dict[Text, Text]
Timestamp = Annotated[AwareDatetime, BeforeValidator(_timestamp_text), AfterValidator(_storable)]

# Alertmanager marks "no end yet" with Go's zero time.
_GO_ZERO_YEAR = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class Alert(_Model):
    status: Literal["firing", "resolved"]
    labels: Labels
    annotations: Labels = Field(default_factory=dict)
    starts_at: Timestamp = Field(alias="startsAt")
    ends_at: Timestamp | None = Field(default=None, alias="endsAt")
    generator_url: Text = Field(default="", alias="generatorURL")
    fingerprint: Annotated[Text, Field(min_length=1, max_length=256)]

    @field_validator("ends_at")
    @classmethod
    def _zero_time_is_none(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.year == _GO_ZERO_YEAR:
            return None
        return value

    @property
    def firing(self) -> bool:
        return self.status == "firing"


class WebhookPayload(_Model):
    version: Literal["4"]
    group_key: Annotated[Text, Field(min_length=1, alias="groupKey")]
    truncated_alerts: StrictInt = Field(default=0, ge=0, alias="truncatedAlerts")
    status: Literal["firing", "resolved"]
    receiver: Annotated[Text, Field(min_length=1)]
    group_labels: Labels = Field(default_factory=dict, alias="groupLabels")
    common_labels: Labels = Field(default_factory=dict, alias="commonLabels")
    common_annotations: Labels = Field(default_factory=dict, alias="commonAnnotations")
    external_url: Text = Field(default="", alias="externalURL")
    alerts: Annotated[list[Alert], Field(min_length=1)]
