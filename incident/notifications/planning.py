"""Who is told what, for each event on an incident's timeline (pure).

Slack keeps one parent message per incident, edited as status and severity
change, with every later event as a reply in its thread. PagerDuty gets one
trigger per opening (dedup_key = the incident key), then acknowledge and
resolve. A flapping incident stops paging until it settles. What PagerDuty
itself told us (``by: pagerduty``) is never sent back to it. An incident
opened under a maintenance window is told nothing until the window ends; the
end of its maintenance is then told as its opening. The incident's route says
where: each of its Slack channels and PagerDuty services is a destination of
its own, told each event once; with no route, the defaults ('' destination).
Email, for a severity whose policy says so, is one message to the route's
recipients (else INCIDENT_EMAIL_TO) at the opening, each escalation and the
resolution. With none of Slack, PagerDuty and email configured, everything
goes to the console notifier.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from incident.config import Settings
from incident.incidents.lifecycle import PAGERDUTY, announced_opening
from incident.incidents.models import TimelineKind
from incident.integrations.email import DIGEST_KEY_PREFIX
from incident.notifications.models import Action, Channel
from incident.rules import Destinations, Severity
from incident.rules.escalation import EscalationPolicy

# An incident no route matched: every channel's default.
UNROUTED = Destinations()

# Events that change what the parent message shows, so it is edited as well.
EDITS_PARENT = {
    TimelineKind.REOPENED,
    TimelineKind.SEVERITY_CHANGED,
    TimelineKind.ACKNOWLEDGED,
    TimelineKind.UNACKNOWLEDGED,
    TimelineKind.RESOLVED,
    TimelineKind.FLAPPING,
    TimelineKind.SETTLED,
}
_SLACK_ACTION = {
    TimelineKind.ACKNOWLEDGED: Action.ACKNOWLEDGE,
    TimelineKind.RESOLVED: Action.RESOLVE,
    TimelineKind.ESCALATED: Action.ESCALATE,
}


@dataclass(frozen=True)
class Channels:
    """What this installation can reach, from settings (and routes, for PagerDuty)."""

    slack: bool
    slack_default_channel: str | None
    pagerduty: bool
    # A default routing key is set: an incident routed to no service pages it.
    pagerduty_default: bool = True
    email: bool = False
    email_to: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings, *, routed_pagerduty: bool = False) -> Channels:
        default_key = settings.pagerduty_routing_key is not None
        return cls(
            slack=settings.slack_bot_token is not None and bool(settings.slack_channel),
            slack_default_channel=settings.slack_channel,
            pagerduty=default_key or routed_pagerduty,
            pagerduty_default=default_key,
            email=settings.email_configured,
            email_to=tuple(settings.email_recipients),
        )

    @property
    def console_only(self) -> bool:
        return not self.slack and not self.pagerduty and not self.email


@dataclass(frozen=True)
class Planned:
    channel: Channel
    action: Action
    target: str | None = None
    text: str | None = None
    priority: bool = False
    # Part of the ledger key: the routed Slack channel or routing-key variable; '' the default.
    destination: str = ""


@dataclass(frozen=True)
class IncidentState:
    severity: Severity
    flapping: bool
    # The destinations (see Planned.destination) with a PagerDuty trigger, and
    # with a Slack parent message, that exist (or are planned) for it.
    paged: frozenset[str] = frozenset()
    slack_parents: frozenset[str] = frozenset()


def plan(
    kind: TimelineKind,
    detail: dict[str, Any],
    incident: IncidentState,
    policy: EscalationPolicy,
    channels: Channels,
    rule_channel: str | None = None,
    route: Destinations = UNROUTED,
) -> list[Planned]:
    """``rule_channel``: the Slack channel the matching severity rule names, if any;
    ``route``: the incident's recorded destinations, each told on its own."""
    if kind is TimelineKind.REMEDIATION and not detail.get("announce"):
        # Retries in progress, and outcomes of `on_failure: ignore`: recorded only.
        return []
    opening = announced_opening(kind, detail)
    if kind is TimelineKind.MAINTENANCE and opening is None:
        # The end of a resolved incident's maintenance: it was never told, nor is now.
        return []
    text = describe(kind, detail)
    urgent = incident.severity.rank <= 2
    if channels.console_only:
        action = Action.TRIGGER if opening is TimelineKind.OPENED else _console_action(kind)
        # The console also shows the mail a severity with `email: true` would send.
        mail = policy.email and _email_action(kind, opening is not None) is not None
        recipients = ",".join(route.email_to(channels.email_to))
        target = DIGEST_KEY_PREFIX + recipients if mail else None
        return [Planned(Channel.CONSOLE, action, target, text=text, priority=urgent)]

    planned: list[Planned] = []
    if channels.slack and policy.slack_enabled:
        default = rule_channel or policy.slack_channel or channels.slack_default_channel
        slack = [(channel, channel) for channel in route.slack] or [("", default)]
        for destination, target in slack:
            if kind is TimelineKind.OPENED or destination not in incident.slack_parents:
                # The first message a channel hears about an incident becomes its parent.
                action, priority = Action.TRIGGER, urgent
            else:
                action = _SLACK_ACTION.get(kind, Action.UPDATE)
                priority = urgent and (opening is not None or kind is TimelineKind.ESCALATED)
            planned.append(Planned(Channel.SLACK, action, target, text, priority, destination))
    if channels.pagerduty and detail.get("by") != PAGERDUTY:
        services = list(route.pagerduty) or ([""] if channels.pagerduty_default else [])
        for service in services:
            planned.extend(
                replace(each, destination=service)
                for each in _pagerduty(kind, opening is not None, incident, policy, service)
            )
    if channels.email and policy.email:
        action = _email_action(kind, opening is not None)
        recipients = route.email_to(channels.email_to)
        if action is not None and recipients:
            planned.append(Planned(Channel.EMAIL, action, ",".join(recipients), text, urgent))
    return planned


def _email_action(kind: TimelineKind, opening: bool) -> Action | None:
    """Mail is for the moments a reader acts on: opening, escalation, resolution."""
    if opening:
        return Action.TRIGGER
    if kind in (TimelineKind.ESCALATED, TimelineKind.SEVERITY_CHANGED):
        return Action.ESCALATE
    if kind is TimelineKind.RESOLVED:
        return Action.RESOLVE
    return None


def _pagerduty(
    kind: TimelineKind, opening: bool, incident: IncidentState, policy: EscalationPolicy,
    service: str,
) -> list[Planned]:
    pages = policy.pagerduty is not None and not incident.flapping
    paged = service in incident.paged
    if opening or kind is TimelineKind.SEVERITY_CHANGED:
        # A raised severity re-triggers with the same dedup_key: PagerDuty
        # updates the alert it has rather than opening another.
        if pages:
            return [Planned(Channel.PAGERDUTY, Action.TRIGGER, policy.pagerduty, priority=True)]
    elif kind is TimelineKind.ESCALATED:
        if pages:
            return [Planned(Channel.PAGERDUTY, Action.ESCALATE, policy.pagerduty, priority=True)]
    elif kind is TimelineKind.ACKNOWLEDGED and paged:
        return [Planned(Channel.PAGERDUTY, Action.ACKNOWLEDGE, priority=True)]
    elif kind is TimelineKind.RESOLVED and paged:
        return [Planned(Channel.PAGERDUTY, Action.RESOLVE, priority=True)]
    return []


def _console_action(kind: TimelineKind) -> Action:
    if kind is TimelineKind.OPENED:
        return Action.TRIGGER
    return _SLACK_ACTION.get(kind, Action.UPDATE)


def describe(kind: TimelineKind, detail: dict[str, Any]) -> str:
    """One line for a thread reply or a digest."""
    match kind:
        case TimelineKind.OPENED:
            return f"Opened as {detail.get('severity', '?')} with {detail.get('alerts', 0)} firing alert(s)"
        case TimelineKind.REOPENED:
            return "Fired again: reopened"
        case TimelineKind.ALERT_ADDED:
            return f"Alert {detail.get('fingerprint', '?')} firing ({detail.get('severity', '?')})"
        case TimelineKind.ALERT_RESOLVED:
            return f"Alert {detail.get('fingerprint', '?')} resolved"
        case TimelineKind.SEVERITY_CHANGED:
            return f"Severity raised from {detail.get('from')} to {detail.get('to')}"
        case TimelineKind.ACKNOWLEDGED:
            return "Acknowledged" + _in_pagerduty(detail) + _note(detail)
        case TimelineKind.UNACKNOWLEDGED:
            return "Unacknowledged" + _in_pagerduty(detail) + ": paging resumes" + _note(detail)
        case TimelineKind.RESOLVED:
            by = {
                "api": "by hand",
                "stale": f"stale: not re-sent by Alertmanager for {detail.get('stale_after')}",
                PAGERDUTY: f"in PagerDuty by {_who(detail)}",
            }.get(detail.get("by"), "all alerts resolved")
            return f"Resolved ({by})" + _note(detail)
        case TimelineKind.NOTE:
            return f"Note by {_who(detail)}: {detail.get('note', '')}"
        case TimelineKind.FLAPPING:
            return "Flapping: paging paused until it settles"
        case TimelineKind.SETTLED:
            return "Settled: paging resumes"
        case TimelineKind.REMEDIATION:
            return _remediation_line(detail)
        case TimelineKind.ESCALATED:
            return f"Escalated: {detail.get('reason', 'not acknowledged')}"
        case TimelineKind.SILENCED:
            comment = f": {detail['comment']}" if detail.get("comment") else ""
            return f"Silenced for {detail.get('duration', '?')} by {_who(detail)}{comment}"
        case TimelineKind.UNSILENCED:
            return f"Silence lifted by {_who(detail)}"
        case TimelineKind.MAINTENANCE if detail.get("ended"):
            return "Maintenance over and still open: told now, held back by a maintenance window"
        case _:
            return kind.value.replace("_", " ").capitalize()


def _remediation_line(detail: dict[str, Any]) -> str:
    attempts = detail.get("attempts", 0)
    tries = f" after {attempts} attempt{'s' if attempts != 1 else ''}" if attempts else ""
    status = str(detail.get("status", "?")).replace("_", " ")
    error = f": {detail['error']}" if detail.get("error") else ""
    return f"Remediation {detail.get('name', '?')} {status}{tries}{error}"


def _who(detail: dict[str, Any]) -> str:
    """The actor of an entry as a reader knows them: a Slack mention, a name, an e-mail."""
    by, user, name = detail.get("by"), detail.get("user"), detail.get("name")
    if by == "slack" and user:
        return f"<@{user}>"
    if name or user:
        return str(name or user)
    return "the API" if by == "api" else str(by or "someone")


def _in_pagerduty(detail: dict[str, Any]) -> str:
    return f" in PagerDuty by {_who(detail)}" if detail.get("by") == PAGERDUTY else ""


def _note(detail: dict[str, Any]) -> str:
    return f": {detail['note']}" if detail.get("note") else ""
