"""The Alertmanager webhook payload, version 4.

Unknown fields are accepted and ignored (newer Alertmanager releases add some,
such as ``notification_reason``); known fields are strict, so a wrong type is
named in the 422 rather than coerced.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

Labels = dict[StrictStr, StrictStr]

# Alertmanager marks "no end yet" with Go's zero time.
_GO_ZERO_YEAR = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class Alert(_Model):
    status: Literal["firing", "resolved"]
    labels: Labels
    annotations: Labels = Field(default_factory=dict)
    starts_at: datetime = Field(alias="startsAt")
    ends_at: datetime | None = Field(default=None, alias="endsAt")
    generator_url: StrictStr = Field(default="", alias="generatorURL")
    fingerprint: Annotated[StrictStr, Field(min_length=1, max_length=256)]

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
    group_key: Annotated[StrictStr, Field(min_length=1, alias="groupKey")]
    truncated_alerts: int = Field(default=0, ge=0, alias="truncatedAlerts")
    status: Literal["firing", "resolved"]
    receiver: Annotated[StrictStr, Field(min_length=1)]
    group_labels: Labels = Field(default_factory=dict, alias="groupLabels")
    common_labels: Labels = Field(default_factory=dict, alias="commonLabels")
    common_annotations: Labels = Field(default_factory=dict, alias="commonAnnotations")
    external_url: StrictStr = Field(default="", alias="externalURL")
    alerts: Annotated[list[Alert], Field(min_length=1)]
