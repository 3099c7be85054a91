"""What a Slack click does: the same transitions as the API, by that Slack user.

The incident is read from PostgreSQL by the id the control carries; the
store's row lock orders a click against the worker and other clicks. A click
that cannot act (a second click, an incident already in that state, one that
no longer exists) changes nothing, and the clicker is told why, only to them.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from enum import StrEnum
from typing import Protocol

import redis
import structlog
from sqlalchemy import Engine

from incident import keys
from incident.db import session_scope
from incident.incidents import store
from incident.incidents.events import EventBus
from incident.incidents.lifecycle import SLACK, Actor, TransitionNotAllowed
from incident.incidents.models import Incident, TimelineKind
from incident.integrations.slack_blocks import actor_phrase
from incident.integrations.slack_interactivity import post_ephemeral
from incident.interactions.schemas import ACKNOWLEDGE, RESOLVE, SILENCE, Click
from incident.integrations.alertmanager import AlertmanagerRefused, AlertmanagerUnavailable
from incident.rules import Rules
from incident.silences.service import (
    REFERENCE_PREFIX,
    NothingToSilence,
    Silences,
    SilencingNotConfigured,
)

log = structlog.get_logger(__name__)

CLICK_TASK = "incident.interactions.slack_click"
# Slack accepts answers on a response_url for 30 minutes; a click's answer comes in seconds.
RESPONSE_URL_TTL = timedelta(minutes=15)
SILENCE_DURATIONS = {"1h": timedelta(hours=1), "4h": timedelta(hours=4), "24h": timedelta(hours=24)}
_TRANSITIONS = {ACKNOWLEDGE: TimelineKind.ACKNOWLEDGED, RESOLVE: TimelineKind.RESOLVED}


class Outcome(StrEnum):
    DONE = "done"
    UNCHANGED = "unchanged"
    UNKNOWN = "unknown"
    REFUSED = "refused"


class Services(Protocol):
    """What a click needs from its process's context."""

    @property
    def engine(self) -> Engine: ...

    @property
    def events(self) -> EventBus: ...

    @property
    def redis(self) -> redis.Redis: ...

    @property
    def rules(self) -> Rules: ...

    @property
    def silences(self) -> Silences: ...


class ResponseUrls:
    """Each click's response_url, kept in Redis for a while under a random key:
    task arguments, Flower and logs see the key only."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def keep(self, url: str) -> str:
        key = secrets.token_urlsafe(24)
        self._redis.set(keys.SLACK_RESPONSE_URL + key, url, ex=RESPONSE_URL_TTL)
        return key

    def get(self, key: str) -> str | None:
        url = self._redis.get(keys.SLACK_RESPONSE_URL + key)
        return url.decode() if url is not None else None


def with_response_url(click: Click, response_url: str | None, client: redis.Redis) -> Click:
    if response_url is None:
        return click
    return replace(click, response_key=ResponseUrls(client).keep(response_url))


def handle_click(
    services: Services, click: Click, *, reference: str | None = None,
    tell: Callable[[str, str], bool] = post_ephemeral,
) -> Outcome:
    """``reference``: the same for every run of one click (its task's id), so that a
    click delivered twice makes one silence."""
    actor = Actor(SLACK, click.user_id, click.user_name)
    log.info("slack click", incident_id=click.incident_id, action=click.action, user=click.user_id)

    def answer(text: str) -> None:
        url = ResponseUrls(services.redis).get(click.response_key) if click.response_key else None
        if url is None:
            log.info("no response_url to answer a click through", incident_id=click.incident_id)
            return
        tell(url, text)

    if not services.rules.slack.allows(click.user_id):
        log.info("slack click refused: user not in slack.allowed_users", user=click.user_id)
        answer("Sorry, you are not on the list of people who may act on incidents from Slack "
               "(slack.allowed_users in the rules file): nothing was changed.")
        return Outcome.REFUSED
    if click.action == SILENCE:
        return _silence(services, click, actor, answer, reference)
    try:
        with session_scope(services.engine) as session:
            store.transition_by_hand(
                session, click.incident_id, _TRANSITIONS[click.action], actor,
                events=services.events,
            )
    except store.IncidentNotFound:
        answer(f"Incident #{click.incident_id} does not exist (any more): nothing was changed.")
        return Outcome.UNKNOWN
    except TransitionNotAllowed:
        answer(_already(services.engine, click.incident_id))
        return Outcome.UNCHANGED
    return Outcome.DONE


def _silence(
    services: Services, click: Click, actor: Actor, answer: Callable[[str], None],
    reference: str | None,
) -> Outcome:
    """The Silence menu: silence the incident's alerts for the chosen time, as the API does."""
    try:
        services.silences.silence(
            click.incident_id, actor, SILENCE_DURATIONS[click.duration or ""],
            reference=REFERENCE_PREFIX + reference if reference else None,
        )
    except store.IncidentNotFound:
        answer(f"Incident #{click.incident_id} does not exist (any more): nothing was changed.")
        return Outcome.UNKNOWN
    except SilencingNotConfigured:
        answer("Silencing is not available: INCIDENT_ALERTMANAGER_URL is not set")
        return Outcome.REFUSED
    except (NothingToSilence, AlertmanagerRefused, AlertmanagerUnavailable) as exc:
        log.warning("slack silence not made", incident_id=click.incident_id, error=str(exc))
        answer(f"Incident #{click.incident_id} was not silenced: {_why_not(exc)}")
        return Outcome.REFUSED
    answer(f"Incident #{click.incident_id} is silenced in Alertmanager for {click.duration}.")
    return Outcome.DONE


def _why_not(exc: Exception) -> str:
    # The clicker is told why, never where Alertmanager runs.
    if isinstance(exc, AlertmanagerRefused):
        return f"Alertmanager refused: {exc.reason}"
    if isinstance(exc, AlertmanagerUnavailable):
        return "no Alertmanager answered in time; try again in a moment"
    return str(exc)


def _already(engine: Engine, incident_id: int) -> str:
    with session_scope(engine) as session:
        incident = session.get(Incident, incident_id)
        if incident is None:
            return f"Incident #{incident_id} does not exist (any more): nothing was changed."
        who = incident.resolved_by if incident.status == "resolved" else incident.acknowledged_by
        phrase = actor_phrase(who)
        return f"Incident #{incident_id} is already {incident.status}" + (f" {phrase}" if phrase else "")
