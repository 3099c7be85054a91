"""The ``routes:`` section: where an incident's notifications go.

The severity's escalation policy says whether each channel is used and how
urgently; the route, chosen from the incident's labels when it opens, says
where. Routes are tried in file order; the first match wins unless it says
``continue: true``, and then later routes are tried too. A route that names no
destination for a channel leaves that channel to its default (the
``INCIDENT_*`` settings), as does an incident no route matches.

The chosen destinations are recorded on the incident (``Destinations``), so
everything later for that incident goes to the same places even after the
rules file changes. PagerDuty routing keys are recorded by the name of the
environment variable holding them, never by value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import structlog
from pydantic import AfterValidator, Field, StrictBool, model_validator

from incident.config import ConfigurationError
from incident.rules.matchers import Matcher, matches_all
from incident.rules.schema_types import MatcherList, NonEmptyStr, StrictModel, rule_error
from incident.rules.templates import (
    LABELS,
    Placeholder,
    RenderError,
    TemplateError,
    TemplateValues,
    parse_template,
    render,
)

log = structlog.get_logger(__name__)

# What Slack accepts as a channel name: lowercase letters, digits, '-' and '_', at most 80.
SLACK_CHANNEL_NAME = re.compile(r"[a-z0-9_-]{1,80}")
# A channel may also be given by its id (C…, G…), as Slack shows it.
SLACK_CHANNEL_ID = re.compile(r"[CG][A-Z0-9]{6,}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
EMAIL_ADDRESS = re.compile(r"[^@\s<>,]+@[^@\s<>,]+\.[^@\s<>,]+")


class ChannelNameError(ValueError):
    pass


def check_channel_name(channel: str) -> str:
    """``channel`` unchanged when Slack would accept it, else ChannelNameError saying why."""
    if SLACK_CHANNEL_ID.fullmatch(channel):
        return channel
    name = channel.removeprefix("#")
    if not SLACK_CHANNEL_NAME.fullmatch(name):
        raise ChannelNameError(
            f"Slack channel {channel!r} is not a name Slack accepts: lowercase letters, "
            "digits, '-' and '_', at most 80 characters (a leading '#' is allowed)"
        )
    return channel


def _check_channel_template(text: str) -> str:
    try:
        pieces = parse_template(text)
    except TemplateError as error:
        raise rule_error(str(error)) from None
    for piece in pieces:
        if isinstance(piece, Placeholder) and piece.namespace != LABELS:
            raise rule_error(
                f"{piece.text} in {text!r}: a channel may use only {{labels.NAME}}, "
                "since it is chosen before the incident exists"
            )
    # The literal parts must already be acceptable: a label value stands in as "x".
    sample = "".join(piece if isinstance(piece, str) else "x" for piece in pieces)
    try:
        check_channel_name(sample)
    except ChannelNameError as error:
        raise rule_error(str(error)) from None
    return text


def _check_env_name(name: str) -> str:
    if not ENV_NAME.fullmatch(name):
        raise rule_error(f"{name!r} is not an environment variable name")
    return name


def _check_address(address: str) -> str:
    if not EMAIL_ADDRESS.fullmatch(address):
        raise rule_error(f"{address!r} is not an e-mail address")
    return address


ChannelTemplate = Annotated[NonEmptyStr, AfterValidator(_check_channel_template)]


class SlackRoute(StrictModel):
    channel: ChannelTemplate


class PagerDutyRoute(StrictModel):
    # The name of the variable holding the integration key: the key stays out of the file.
    routing_key_env: Annotated[NonEmptyStr, AfterValidator(_check_env_name)]


def _some_recipients(addresses: tuple[str, ...]) -> tuple[str, ...]:
    if not addresses:
        raise rule_error("at least one recipient is needed")
    return addresses


class EmailRoute(StrictModel):
    to: Annotated[
        tuple[Annotated[NonEmptyStr, AfterValidator(_check_address)], ...],
        AfterValidator(_some_recipients),
    ]


class Route(StrictModel):
    name: NonEmptyStr | None = None
    matchers: MatcherList
    continue_: StrictBool = Field(False, alias="continue")
    slack: SlackRoute | None = None
    pagerduty: PagerDutyRoute | None = None
    email: EmailRoute | None = None

    @model_validator(mode="after")
    def _labels_guaranteed(self) -> Route:
        # A channel from a label needs the label: the route's matchers must
        # promise it, so a matched incident can always render its channel.
        if self.slack is None:
            return self
        for piece in parse_template(self.slack.channel):
            if isinstance(piece, Placeholder) and not _requires_label(self.matchers, piece.name):
                raise rule_error(
                    f"{piece.text} needs the route to match only incidents with label "
                    f"{piece.name!r}: add a matcher such as '{piece.name}=~\".+\"'",
                    at=("slack", "channel"),
                )
        return self


def _requires_label(matchers: tuple[Matcher, ...], name: str) -> bool:
    """True when every label set the matchers accept has ``name`` non-empty."""
    return any(m.name == name and not m.matches({}) for m in matchers)


@dataclass(frozen=True)
class Destinations:
    """Where one incident's notifications go, as recorded on it when it opened.

    An empty tuple means that channel's default: ``INCIDENT_SLACK_CHANNEL`` (or
    the severity's own channel), ``INCIDENT_PAGERDUTY_ROUTING_KEY``,
    ``INCIDENT_EMAIL_TO``. ``pagerduty`` holds environment variable names.
    """

    routes: tuple[str, ...] = ()
    slack: tuple[str, ...] = ()
    pagerduty: tuple[str, ...] = ()
    email: tuple[str, ...] = ()
    problems: tuple[str, ...] = field(default=(), compare=False)

    def email_to(self, default: Sequence[str]) -> tuple[str, ...]:
        """The incident's e-mail recipients: its route's, else ``default`` (INCIDENT_EMAIL_TO)."""
        return self.email or tuple(default)

    def as_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "routes": list(self.routes),
            "slack": list(self.slack),
            "pagerduty": list(self.pagerduty),
            "email": list(self.email),
        }
        if self.problems:
            record["problems"] = list(self.problems)
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None) -> Destinations:
        if not record:
            return cls()
        return cls(
            routes=tuple(record.get("routes", ())),
            slack=tuple(record.get("slack", ())),
            pagerduty=tuple(record.get("pagerduty", ())),
            email=tuple(record.get("email", ())),
            problems=tuple(record.get("problems", ())),
        )


def route_name(route: Route, index: int) -> str:
    return route.name or f"routes[{index}]"


def choose_destinations(routes: Sequence[Route], labels: Mapping[str, str]) -> Destinations:
    """The matching routes' destinations for an incident with these labels.

    A label value that would make a channel name Slack refuses cannot be caught
    when the file is checked: that channel falls back to the default, with a
    warning in the log and a line in the recorded ``problems``.
    """
    names: list[str] = []
    slack: list[str] = []
    pagerduty: list[str] = []
    email: list[str] = []
    problems: list[str] = []
    for index, route in enumerate(routes):
        if not matches_all(route.matchers, labels):
            continue
        name = route_name(route, index)
        names.append(name)
        if route.slack is not None:
            try:
                channel = check_channel_name(
                    render(route.slack.channel, TemplateValues(labels=labels))
                )
            except (RenderError, ChannelNameError) as error:
                problems.append(f"{name}: {error}; using the default channel")
                log.warning("route channel unusable; using the default", route=name,
                            error=str(error))
            else:
                _add(slack, channel)
        if route.pagerduty is not None:
            _add(pagerduty, route.pagerduty.routing_key_env)
        if route.email is not None:
            for address in route.email.to:
                _add(email, address)
        if not route.continue_:
            break
    return Destinations(tuple(names), tuple(slack), tuple(pagerduty), tuple(email),
                        tuple(problems))


def _add(items: list[str], item: str) -> None:
    if item not in items:
        items.append(item)


def require_routing_keys(routes: Sequence[Route], environ: Mapping[str, str] | None = None) -> None:
    """Refuse to start when a route's ``routing_key_env`` names an unset variable."""
    missing = unset_routing_keys(routes, environ)
    if missing:
        raise ConfigurationError(
            "the rules file's routes name PagerDuty routing key variables that are not set: "
            + ", ".join(missing)
        )


def unset_routing_keys(routes: Sequence[Route], environ: Mapping[str, str] | None = None) -> list[str]:
    """The ``routing_key_env`` names that have no value in the environment, in file order."""
    environ = os.environ if environ is None else environ
    missing: list[str] = []
    for route in routes:
        if route.pagerduty is not None and not environ.get(route.pagerduty.routing_key_env):
            _add(missing, route.pagerduty.routing_key_env)
    return missing
