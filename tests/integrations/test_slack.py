"""The real SlackNotifier (and slack_sdk) against the fake Slack Web API."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from incident.integrations import slack as slack_module
from incident.integrations.base import AlertView, IncidentView
from incident.integrations.slack import SlackNotifier
from tests.fakes.slack import FakeSlack
from tests.integrations.conftest import make_incident

CHANNEL = "#incidents"


def block_texts(blocks: list[dict[str, Any]]) -> list[str]:
    texts = []
    for block in blocks:
        if "text" in block:
            texts.append(block["text"]["text"])
        texts.extend(field["text"] for field in block.get("fields", []))
        texts.extend(element["text"] for element in block.get("elements", []))
    return texts


def assert_within_slack_limits(blocks: list[dict[str, Any]]) -> None:
    assert len(blocks) <= 50
    for block in blocks:
        if block["type"] == "header":
            assert len(block["text"]["text"]) <= 150
        if block["type"] == "section":
            if "text" in block:
                assert 0 < len(block["text"]["text"]) <= 3000
            assert len(block.get("fields", [])) <= 10
            assert all(len(field["text"]) <= 2000 for field in block.get("fields", []))


def test_parent_message_renders_the_incident_with_its_ledger_id(
    slack: SlackNotifier, fake_slack: FakeSlack, incident: IncidentView
) -> None:
    ts = slack.post_parent(CHANNEL, incident, ledger_id=7)

    [message] = fake_slack.parents(CHANNEL)
    assert message.ts == ts
    assert message.channel == fake_slack.channel_id(CHANNEL)
    assert message.metadata == {
        "event_type": "incident_notification",
        "event_payload": {"ledger_id": 7, "incident_id": 42},
    }
    header = message.blocks[0]
    assert header["type"] == "header"
    assert "SEV1" in header["text"]["text"] and "HighErrorRate api" in header["text"]["text"]
    texts = "\n".join(block_texts(message.blocks))
    assert "*Status*\nTriggered" in texts
    for name in ("alertname", "service", "instance", "env", "severity"):
        assert f"*{name}*\n{incident.labels[name]}" in texts
    assert "*team*" not in texts  # only the key labels
    assert "5xx ratio above 5% for 10 minutes" in texts
    assert "The api answers 7.3% of requests with a 5xx." in texts
    assert "<https://runbooks.example.com/high-error-rate|Runbook>" in texts
    assert "<http://prometheus:9090/graph?g0.expr=rate%28x%29&amp;g0.tab=1|Source>" in texts
    assert f"<{incident.silence_url()}|Silence>" in texts
    assert "<http://incident.example.com/incidents/42|Incident #42>" in texts
    assert message.text.startswith(":red_circle: [SEV1] HighErrorRate api — 5xx ratio")
    assert_within_slack_limits(message.blocks)
    [request] = fake_slack.calls("chat.postMessage")
    assert request.body["unfurl_links"] is False


def test_label_values_cannot_mention_or_link(slack: SlackNotifier, fake_slack: FakeSlack) -> None:
    hostile = "<!channel> & <https://evil.example|click>"
    incident = make_incident(
        title=f"HighErrorRate {hostile}",
        summary=hostile,
        labels={"alertname": "HighErrorRate", "service": hostile},
        annotations={"description": hostile, "runbook_url": "javascript:alert(1)"},
    )

    slack.post_parent(CHANNEL, incident, ledger_id=1)

    [message] = fake_slack.parents(CHANNEL)
    mrkdwn = [message.text, *block_texts(message.blocks[1:])]
    assert all("<!channel>" not in text and "<https://evil" not in text for text in mrkdwn)
    assert any("&lt;!channel&gt; &amp; &lt;https://evil.example|click&gt;" in t for t in mrkdwn)
    assert "javascript:" not in json.dumps(message.blocks)


def test_oversized_incident_still_fits_slack_limits(
    slack: SlackNotifier, fake_slack: FakeSlack
) -> None:
    incident = make_incident(
        title="T" * 1000,
        summary="<&>" * 5000,
        labels=dict.fromkeys(("alertname", "service", "instance", "env"), "v" * 5000),
        annotations={"description": "d" * 10_000, "runbook_url": "https://r.example/" + "x" * 4000},
        alerts=tuple(
            AlertView(f"fp{i}", "firing", generator_url=f"http://prom/{'g' * 900}{i}")
            for i in range(100)
        ),
    )

    slack.post_parent(CHANNEL, incident, ledger_id=1)

    [message] = fake_slack.parents(CHANNEL)
    assert_within_slack_limits(message.blocks)
    assert len(message.text) <= 3000
    assert "&amp;" in message.text and "&am…" not in message.text


def test_update_edits_the_parent_in_place_and_keeps_its_metadata(
    slack: SlackNotifier, fake_slack: FakeSlack, incident: IncidentView
) -> None:
    ts = slack.post_parent(CHANNEL, incident, ledger_id=7)

    slack.update_parent(CHANNEL, ts, replace(incident, status="resolved", severity="SEV2"))

    [message] = fake_slack.parents(CHANNEL)
    assert message.edits == 1
    assert "SEV2" in message.blocks[0]["text"]["text"]
    assert "*Status*\nResolved" in block_texts(message.blocks)
    assert message.metadata["event_payload"]["ledger_id"] == 7
    # Slack's chat.update takes only a channel id: the name was translated.
    [update] = fake_slack.calls("chat.update")
    assert update.body["channel"] == fake_slack.channel_id(CHANNEL)


def test_a_fresh_notifier_resolves_a_channel_name_before_updating(
    slack: SlackNotifier, fake_slack: FakeSlack, incident: IncidentView
) -> None:
    ts = slack.post_parent(CHANNEL, incident, ledger_id=7)
    after_restart = SlackNotifier(fake_slack.token, api_url=fake_slack.url)

    after_restart.update_parent(CHANNEL, ts, replace(incident, status="acknowledged"))

    assert fake_slack.message(ts).edits == 1
    assert len(fake_slack.calls("conversations.list")) == 1


def test_reply_goes_into_the_thread_escaped(
    slack: SlackNotifier, fake_slack: FakeSlack, incident: IncidentView
) -> None:
    parent = slack.post_parent(CHANNEL, incident, ledger_id=7)

    ts = slack.reply(CHANNEL, parent, "*Resolved* by <@U123> & co", ledger_id=8)

    [reply] = fake_slack.replies(parent)
    assert reply.ts == ts
    assert reply.text == "*Resolved* by &lt;@U123&gt; &amp; co"
    assert reply.metadata["event_payload"] == {"ledger_id": 8}
    assert len(fake_slack.parents(CHANNEL)) == 1


def test_digest_packs_lines_within_the_block_limit(
    slack: SlackNotifier, fake_slack: FakeSlack
) -> None:
    lines = [f"#{n} HighErrorRate api — still firing " + "x" * 80 for n in range(2000)]

    ts = slack.post_digest(CHANNEL, lines, ledger_id=9)

    message = fake_slack.message(ts)
    assert_within_slack_limits(message.blocks)
    assert message.blocks[0]["text"]["text"] == "Incident digest: 2000 items"
    shown = sum(text.count("\n") + 1 for text in block_texts(message.blocks[1:-1]))
    assert message.blocks[-1]["elements"][0]["text"] == f"…and {2000 - shown} more"
    assert message.metadata["event_payload"] == {"ledger_id": 9}


def test_find_posted_finds_our_message_by_ledger_id(
    slack: SlackNotifier, fake_slack: FakeSlack, incident: IncidentView
) -> None:
    parent = slack.post_parent(CHANNEL, incident, ledger_id=7)
    reply = slack.reply(CHANNEL, parent, "acknowledged", ledger_id=8)

    assert slack.find_posted(CHANNEL, ledger_id=7) == parent
    assert slack.find_posted(CHANNEL, ledger_id=8, thread_ts=parent) == reply
    assert slack.find_posted(CHANNEL, ledger_id=99) is None
    assert slack.find_posted(CHANNEL, ledger_id=99, thread_ts=parent) is None
    # Replies are not in the channel's history; later posts are past `oldest`.
    assert slack.find_posted(CHANNEL, ledger_id=8) is None
    assert slack.find_posted(CHANNEL, ledger_id=7, oldest=float(parent)) is None
    assert slack.find_posted(CHANNEL, ledger_id=7, oldest=float(parent) - 1) == parent
    history = fake_slack.calls("conversations.history")[0]
    assert history.body["include_all_metadata"] == "1"


def test_find_posted_needs_the_stamp_too_so_a_reused_ledger_id_is_not_taken_for_ours(
    slack: SlackNotifier, incident: IncidentView
) -> None:
    # Another installation in the channel, or this one before a database restore.
    theirs = slack.post_parent(CHANNEL, incident, ledger_id=7, stamp="2026-11-01T02:00:00+00:00")
    assert slack.find_posted(CHANNEL, ledger_id=7, stamp="2026-11-22T03:00:00+00:00") is None
    ours = slack.post_parent(CHANNEL, incident, ledger_id=7, stamp="2026-11-22T03:00:00+00:00")
    assert slack.find_posted(CHANNEL, ledger_id=7, stamp="2026-11-22T03:00:00+00:00") == ours
    assert slack.find_posted(CHANNEL, ledger_id=7, stamp="2026-11-01T02:00:00+00:00") == theirs


def test_find_posted_follows_pages(
    slack: SlackNotifier,
    fake_slack: FakeSlack,
    incident: IncidentView,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(slack_module, "PAGE_SIZE", 2)
    first = slack.post_parent(CHANNEL, incident, ledger_id=1)
    for ledger_id in range(2, 7):
        slack.post_parent(CHANNEL, incident, ledger_id=ledger_id)

    assert slack.find_posted(CHANNEL, ledger_id=1) == first
    assert len(fake_slack.calls("conversations.history")) == 3
