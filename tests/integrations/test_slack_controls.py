"""The parent's controls and the line saying who acted, as Slack receives them."""

from __future__ import annotations

import pytest

from incident.config import Settings
from incident.integrations import build_slack
from incident.integrations.slack_blocks import actor_phrase, render_parent
from tests.fakes.slack import DEFAULT_TOKEN, FakeSlack
from tests.integrations.conftest import make_incident


def controls(blocks: list[dict]) -> list[str]:
    return [e["action_id"] for b in blocks if b["type"] == "actions" for e in b["elements"]]


def sections(blocks: list[dict]) -> str:
    return "\n".join(b["text"]["text"] for b in blocks if b["type"] == "section" and "text" in b)


def test_without_interactivity_there_are_no_controls():
    _, blocks = render_parent(make_incident())
    assert controls(blocks) == []


def test_controls_follow_the_status():
    _, triggered = render_parent(make_incident(), interactive=True)
    assert controls(triggered) == ["incident.acknowledge", "incident.resolve", "incident.silence"]
    acked = make_incident(status="acknowledged", acknowledged_by={"by": "api"})
    assert controls(render_parent(acked, interactive=True)[1]) == [
        "incident.resolve", "incident.silence"]
    resolved = make_incident(status="resolved", resolved_by={"by": "alertmanager"})
    assert controls(render_parent(resolved, interactive=True)[1]) == []


def test_the_menu_values_name_the_incident_and_the_duration():
    _, blocks = render_parent(make_incident(id=7), interactive=True)
    [menu] = [e for b in blocks if b["type"] == "actions" for e in b["elements"]
              if e["type"] == "static_select"]
    assert [o["value"] for o in menu["options"]] == ["7:1h", "7:4h", "7:24h"]


@pytest.mark.parametrize(("actor", "said"), [
    ({"by": "slack", "user": "U024BE7LH", "name": "alice"}, "by <@U024BE7LH>"),
    ({"by": "slack", "user": "<!channel>", "name": "<!here>"}, "by &lt;!here&gt;"),
    ({"by": "web", "user": "alice@example.com", "name": "alice@example.com"},
     "by alice@example.com"),
    ({"by": "pagerduty", "user": "PXPGF42", "name": "Bob <b@example.com>"},
     "in PagerDuty by Bob &lt;b@example.com&gt;"),
    ({"by": "api"}, "through the API"),
    ({"by": "alertmanager"}, "by Alertmanager"),
    (None, ""),
])
def test_who_acted_is_said_and_escaped(actor, said):
    assert actor_phrase(actor) == said


def test_the_parent_says_who_acknowledged_and_who_resolved():
    incident = make_incident(
        status="resolved",
        acknowledged_by={"by": "web", "user": "alice@example.com", "name": "alice@example.com"},
        resolved_by={"by": "pagerduty", "user": "PX1", "name": "Bob"},
    )
    text = sections(render_parent(incident)[1])
    assert "Acknowledged by alice@example.com\nResolved in PagerDuty by Bob" in text
    api = sections(render_parent(make_incident(status="acknowledged",
                                               acknowledged_by={"by": "api"}))[1])
    assert "Acknowledged through the API" in api


@pytest.mark.parametrize("secret", [None, "s3cret"])
def test_the_notifier_posts_controls_only_with_a_signing_secret(secret):
    with FakeSlack() as slack:
        settings = Settings(
            slack_bot_token=DEFAULT_TOKEN, slack_channel=slack.channel_id("incidents"),
            slack_api_url=slack.url, slack_signing_secret=secret,
        )
        notifier = build_slack(settings)
        ts = notifier.post_parent("incidents", make_incident(), ledger_id=1)
        assert bool(controls(slack.message(ts).blocks)) is (secret is not None)
