"""A Slack ``block_actions`` payload, read into the one ``Click`` it carries.

Only what a click needs is read: who clicked, which control, its value and the
``response_url``. The value is a lookup key (an incident id, and for the
Silence menu a duration); nothing else in the payload is trusted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, ValidationError, field_validator

from incident.integrations.slack_blocks import (
    ACKNOWLEDGE_ACTION,
    RESOLVE_ACTION,
    SILENCE_ACTION,
    SILENCE_CHOICES,
)

ACKNOWLEDGE = "acknowledge"
RESOLVE = "resolve"
SILENCE = "silence"
_VERBS = {ACKNOWLEDGE_ACTION: ACKNOWLEDGE, RESOLVE_ACTION: RESOLVE, SILENCE_ACTION: SILENCE}
MAX_INCIDENT_ID = 2**63 - 1

Text = Annotated[str, Field(max_length=255)]


@dataclass(frozen=True)
class Click:
    """One click, as the task that acts on it takes it (no URL, no secret)."""

    incident_id: int
    action: str  # acknowledge | resolve | silence
    user_id: str
    user_name: str | None = None
    duration: str | None = None  # the Silence menu's choice
    response_key: str | None = None  # where the response_url is kept for a while


class BadClick(ValueError):
    """A payload field that is not what our controls send: ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class _User(BaseModel):
    id: Annotated[str, Field(pattern=r"^[A-Z0-9]{2,40}$")]
    username: Text | None = None
    name: Text | None = None


class _Option(BaseModel):
    value: Text


class _Action(BaseModel):
    action_id: Text
    value: Text | None = None
    selected_option: _Option | None = None


class BlockActions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["block_actions"]
    user: _User
    response_url: HttpUrl | None = None
    # Slack sends the one control that was used.
    actions: Annotated[list[_Action], Field(min_length=1, max_length=1)]

    @field_validator("response_url")
    @classmethod
    def _web_url(cls, url: HttpUrl | None) -> HttpUrl | None:
        if url is not None and len(str(url)) > 2000:
            raise ValueError("longer than 2000 characters")
        return url


def read_click(payload: object) -> tuple[Click, str | None]:
    """The click in a decoded ``payload``, and its response_url; ``ValidationError``
    or ``BadClick`` name the field that is wrong."""
    parsed = BlockActions.model_validate(payload)
    [action] = parsed.actions
    verb = _VERBS.get(action.action_id)
    if verb is None:
        raise BadClick("actions.0.action_id", f"not one of {sorted(_VERBS)}")
    duration = None
    if verb == SILENCE:
        if action.selected_option is None:
            raise BadClick("actions.0.selected_option", "the Silence menu sends a selected option")
        raw_id, _, duration = action.selected_option.value.partition(":")
        if duration not in SILENCE_CHOICES:
            raise BadClick("actions.0.selected_option.value",
                           f"the duration must be one of {', '.join(SILENCE_CHOICES)}")
        field = "actions.0.selected_option.value"
    else:
        raw_id, field = action.value or "", "actions.0.value"
    if not (raw_id.isascii() and raw_id.isdigit() and 0 < int(raw_id) <= MAX_INCIDENT_ID):
        raise BadClick(field, "not an incident id")
    user = parsed.user
    click = Click(
        incident_id=int(raw_id), action=verb, user_id=user.id,
        user_name=user.username or user.name, duration=duration,
    )
    return click, str(parsed.response_url) if parsed.response_url else None


__all__ = ["ACKNOWLEDGE", "RESOLVE", "SILENCE", "BadClick", "BlockActions", "Click",
           "ValidationError", "read_click"]
