"""Who is told what, event by event (pure: no servers)."""

from __future__ import annotations

import pytest

from incident.incidents.models import TimelineKind
from incident.notifications.models import Action, Channel
from incident.notifications.planning import Channels, IncidentState, describe, plan
from incident.rules import Severity, parse_rules

RULES = parse_rules("""
escalation:
  SEV1: {pagerduty: critical, slack: true, ack_timeout: 5m, repeat: 3}
  SEV2: {pagerduty: error, slack: db-oncall}
  SEV3: {slack: true, escalate_after: 1h, escalate_to: SEV2}
  SEV4: {slack: false}
""")
BOTH = Channels(slack=True, slack_default_channel="C-DEFAULT", pagerduty=True)
CONSOLE = Channels(slack=False, slack_default_channel=None, pagerduty=False)


def state(severity="SEV1", *, flapping=False, paged=False, slack_parent=True) -> IncidentState:
    return IncidentState(
        Severity(severity), flapping, frozenset({""} if paged else ()),
        frozenset({""} if slack_parent else ()),
    )


def told(kind, incident, channels=BOTH, **detail):
    policy = RULES.escalation_for(incident.severity)
    return [(p.channel, p.action, p.target, p.priority)
            for p in plan(kind, detail, incident, policy, channels)]


def test_a_sev1_opening_posts_a_parent_and_pages_both_as_priority():
    assert told(TimelineKind.OPENED, state(slack_parent=False)) == [
        (Channel.SLACK, Action.TRIGGER, "C-DEFAULT", True),
        (Channel.PAGERDUTY, Action.TRIGGER, "critical", True),
    ]


def test_a_sev3_opening_only_posts_to_slack_without_priority():
    assert told(TimelineKind.OPENED, state("SEV3", slack_parent=False)) == [
        (Channel.SLACK, Action.TRIGGER, "C-DEFAULT", False),
    ]


def test_a_policy_channel_overrides_the_default():
    assert told(TimelineKind.OPENED, state("SEV2", slack_parent=False))[0][2] == "db-oncall"


def test_later_events_are_thread_updates_and_do_not_page():
    assert told(TimelineKind.ALERT_ADDED, state(paged=True)) == [
        (Channel.SLACK, Action.UPDATE, "C-DEFAULT", False),
    ]


def test_acknowledge_and_resolve_reach_pagerduty_only_when_it_was_paged():
    assert (Channel.PAGERDUTY, Action.ACKNOWLEDGE, None, True) in told(
        TimelineKind.ACKNOWLEDGED, state(paged=True)
    )
    assert all(c != Channel.PAGERDUTY for c, *_ in told(TimelineKind.RESOLVED, state("SEV3")))


def test_a_flapping_incident_stops_paging_but_keeps_the_thread():
    planned = told(TimelineKind.REOPENED, state(flapping=True, paged=True))
    assert [(c, a) for c, a, *_ in planned] == [(Channel.SLACK, Action.UPDATE)]


def test_a_raised_severity_pages_when_the_new_policy_pages():
    planned = told(TimelineKind.SEVERITY_CHANGED, state("SEV1"), **{"from": "SEV3", "to": "SEV1"})
    assert (Channel.PAGERDUTY, Action.TRIGGER, "critical", True) in planned


def test_the_first_slack_message_about_an_incident_becomes_its_parent():
    # SEV4 had Slack off; raised to SEV1, Slack hears of it for the first time.
    planned = told(TimelineKind.SEVERITY_CHANGED, state("SEV1", slack_parent=False))
    assert (Channel.SLACK, Action.TRIGGER, "C-DEFAULT", True) in planned


def test_slack_off_for_a_severity_tells_slack_nothing():
    assert told(TimelineKind.OPENED, state("SEV4", slack_parent=False)) == []


@pytest.mark.parametrize("kind", list(TimelineKind))
def test_with_nothing_configured_every_event_goes_to_the_console(kind):
    # A maintenance entry is told only when it releases an open incident.
    planned = told(kind, state(), CONSOLE, announce=True, ended=True, opening="opened")
    assert planned[0][0] == Channel.CONSOLE
    assert len(planned) == 1


def test_the_end_of_maintenance_is_told_as_the_opening_it_held_back():
    released = {"ended": True, "opening": "opened"}
    assert told(TimelineKind.MAINTENANCE, state(slack_parent=False), **released) == [
        (Channel.SLACK, Action.TRIGGER, "C-DEFAULT", True),
        (Channel.PAGERDUTY, Action.TRIGGER, "critical", True),
    ]
    # Held back at a reopening: a reply under the parent it already has, and a page.
    assert told(TimelineKind.MAINTENANCE, state(paged=True), ended=True, opening="reopened") == [
        (Channel.SLACK, Action.UPDATE, "C-DEFAULT", True),
        (Channel.PAGERDUTY, Action.TRIGGER, "critical", True),
    ]
    assert told(TimelineKind.MAINTENANCE, state(), CONSOLE, **released)[0][1] is Action.TRIGGER


def test_maintenance_that_releases_nothing_open_tells_nobody():
    assert told(TimelineKind.MAINTENANCE, state(slack_parent=False), windows=[1]) == []
    assert told(TimelineKind.MAINTENANCE, state(slack_parent=False), ended=True) == []
    assert told(TimelineKind.MAINTENANCE, state(), CONSOLE, ended=True) == []


@pytest.mark.parametrize("channels", [CONSOLE, None], ids=["console", "slack+pagerduty"])
def test_a_remediation_entry_is_told_only_when_it_says_announce(channels):
    extra = {} if channels is None else {"channels": channels}
    quiet = told(TimelineKind.REMEDIATION, state(), name="restart", status="retrying", **extra)
    assert quiet == []
    loud = told(TimelineKind.REMEDIATION, state(), name="restart", status="failed", attempts=2,
                error="HTTP 503", announce=True, **extra)
    assert [(c, a) for c, a, *_ in loud] in (
        [(Channel.CONSOLE, Action.UPDATE)], [(Channel.SLACK, Action.UPDATE)]
    )
    assert describe(TimelineKind.REMEDIATION, {
        "name": "restart", "status": "failed", "attempts": 2, "error": "HTTP 503"
    }) == "Remediation restart failed after 2 attempts: HTTP 503"


def test_a_severity_rule_channel_overrides_the_severity_policy_channel():
    rules = parse_rules("""
severity:
  rules:
    - matchers: ['team="db"']
      severity: SEV2
      channel: db-pager
""")
    assert rules.slack_channel_for({"team": "db"}) == "db-pager"
    assert rules.slack_channel_for({"team": "web"}) is None
    policy = RULES.escalation_for(Severity.SEV2)
    planned = plan(TimelineKind.OPENED, {}, state("SEV2", slack_parent=False), policy, BOTH,
                   rules.slack_channel_for({"team": "db"}))
    assert planned[0].target == "db-pager"


@pytest.mark.parametrize("kind", [TimelineKind.ACKNOWLEDGED, TimelineKind.RESOLVED,
                                  TimelineKind.UNACKNOWLEDGED, TimelineKind.NOTE])
def test_what_pagerduty_told_us_goes_to_slack_but_never_back_to_pagerduty(kind):
    by_pagerduty = {"by": "pagerduty", "user": "PAGENT1", "name": "Alice"}
    planned = told(kind, state(paged=True), **by_pagerduty)
    assert [channel for channel, *_ in planned] == [Channel.SLACK]
    # The same change from anywhere else does reach PagerDuty.
    if kind in (TimelineKind.ACKNOWLEDGED, TimelineKind.RESOLVED):
        assert Channel.PAGERDUTY in [c for c, *_ in told(kind, state(paged=True), by="slack")]


def test_changes_from_pagerduty_say_who_made_them_there():
    alice = {"by": "pagerduty", "user": "PAGENT1", "name": "Alice"}
    assert describe(TimelineKind.ACKNOWLEDGED, alice) == "Acknowledged in PagerDuty by Alice"
    assert describe(TimelineKind.RESOLVED, alice) == "Resolved (in PagerDuty by Alice)"
    assert describe(TimelineKind.UNACKNOWLEDGED, alice) == (
        "Unacknowledged in PagerDuty by Alice: paging resumes")
    assert describe(TimelineKind.NOTE, {**alice, "note": "rolling back"}) == (
        "Note by Alice: rolling back")


def test_a_silence_is_a_thread_reply_naming_its_clicker_and_never_pages():
    silenced = {"by": "slack", "user": "U024BE7LH", "name": "alice", "duration": "4h",
                "comment": "deploying the fix"}
    assert told(TimelineKind.SILENCED, state(paged=True), **silenced) == [
        (Channel.SLACK, Action.UPDATE, "C-DEFAULT", False),
    ]
    assert describe(TimelineKind.SILENCED, silenced) == (
        "Silenced for 4h by <@U024BE7LH>: deploying the fix"
    )
    lifted = {"by": "web", "user": "alice@example.com", "name": "alice@example.com"}
    assert told(TimelineKind.UNSILENCED, state(paged=True), **lifted) == [
        (Channel.SLACK, Action.UPDATE, "C-DEFAULT", False),
    ]
    assert describe(TimelineKind.UNSILENCED, lifted) == "Silence lifted by alice@example.com"
    assert describe(TimelineKind.SILENCED, {"by": "api", "duration": "1h"}) == (
        "Silenced for 1h by the API"
    )
