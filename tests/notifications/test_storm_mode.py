"""Storm mode's parts on their own: the message within Slack's limits, one storm
message however many workers edit at once, and a storm that ends with nothing
left waiting. (The whole storm, through real workers, is in
test_notifications_storm.py.)"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from incident import keys
from incident.db import session_scope
from incident.incidents.ingest import ingest_payload
from incident.incidents.repeats import RepeatCache
from incident.integrations.slack import SlackNotifier
from incident.integrations.slack_blocks import MAX_BLOCKS, SECTION_LIMIT
from incident.integrations.slack_storm import (
    MAX_LISTED, StormIncident, StormView, render_storm, render_storm_summary,
)
from incident.notifications import storm as storm_mode
from incident.notifications.models import Action, Channel, DeliveryStatus, Notification
from incident.notifications.ratelimit import TokenBucket
from incident.notifications.storm import SlackStorms
from incident.rules import load_rules
from tests.factories import alert, payload
from tests.fakes.slack import DEFAULT_TOKEN, FakeSlack

PUBLIC = "https://incident.example"


def view(n: int, **extra) -> StormView:
    incidents = [
        StormIncident(id=i, title=f"HighErrorRate <svc-{i}> & more " + "x" * 60,
                      severity=("SEV1", "SEV3", "SEV4")[i % 3],
                      status=("triggered", "acknowledged", "resolved")[i % 3],
                      alertname=f"Alert{i % 12}", url=f"{PUBLIC}/incidents/{i}")
        for i in range(1, n + 1)
    ]
    return StormView(started_at=datetime(2026, 12, 3, 20, 0, tzinfo=UTC), incidents=incidents,
                     console_url=f"{PUBLIC}/", **extra)


def texts(blocks) -> list[str]:
    out = []
    for block in blocks:
        if isinstance(block.get("text"), dict):
            out.append(block["text"]["text"])
        out.extend(f["text"] for f in block.get("fields") or [])
        out.extend(e["text"] for e in block.get("elements") or [])
    return out


def test_a_storm_of_thousands_stays_within_slacks_limits_and_points_to_the_console():
    text, blocks = render_storm(view(2000, first=(7, 1999)))
    assert len(blocks) <= MAX_BLOCKS
    assert all(len(t) <= SECTION_LIMIT for t in texts(blocks))
    assert len(text) <= 3000
    body = "\n".join(texts(blocks))
    # Counts over every incident, not only the listed ones.
    assert "666 open · 667 acknowledged · 667 resolved" in body
    assert "666 SEV1 · 667 SEV3 · 667 SEV4" in body
    assert "167 Alert1" in body and "2 other alertnames" in body
    listed = body.count(f"<{PUBLIC}/incidents/")
    assert 0 < listed <= MAX_LISTED
    assert f"and {2000 - listed} more — <{PUBLIC}/|see the console>" in body
    # The incidents this edit adds come first; labels cannot inject mrkdwn.
    assert body.index("/incidents/7|#7>") < body.index("/incidents/1999|#1999>")
    assert "<svc-" not in body and "&lt;svc-7&gt; &amp; more" in body


def test_the_closing_summary_says_how_many_are_still_open():
    ended = view(30, ended_at=datetime(2026, 12, 3, 20, 4, tzinfo=UTC))
    text, blocks = render_storm_summary(ended)
    assert "Alert storm over: 30 incidents in about 4 min (10 SEV1, 10 SEV3, 10 SEV4); " \
           "20 still open." in text
    assert f"<{PUBLIC}/|Open incidents in the console>" in texts(blocks)


@pytest.fixture
def slack():
    with FakeSlack(channels=("storm",)) as fake:
        yield fake


@pytest.fixture
def stormed_row(clean_state, redis_client, slack):
    """One incident with a Slack row waiting for the channel's storm message."""
    channel = slack.channel_id("storm")
    change = ingest_payload(payload(alert(alertname="DiskFull", severity="warning")),
                            rules=load_rules(None), repeats=RepeatCache(redis_client))
    with session_scope() as session:
        row = Notification(
            incident_id=change.incident_id, channel=Channel.SLACK, action=Action.TRIGGER,
            step=1, target=storm_mode.PREFIX + channel, destination="",
            status=DeliveryStatus.DIGESTED, created_at=datetime.now(UTC),
        )
        session.add(row)
        session.flush()
        row_id = row.id
    return channel, row_id, change.incident_id


def storms(redis_client, scheduled: list) -> SlackStorms:
    return SlackStorms(redis_client, lambda channel, delay: scheduled.append((channel, delay)),
                       public_url=PUBLIC)


def test_workers_editing_at_once_post_one_storm_message(redis_client, slack, stormed_row):
    channel, row_id, incident_id = stormed_row
    scheduled: list = []
    modes = storms(redis_client, scheduled)
    assert modes.enter(channel)
    assert not modes.enter(channel), "a channel has one storm at a time"
    notifier = SlackNotifier(DEFAULT_TOKEN, api_url=slack.url)
    bucket = TokenBucket(redis_client)
    start = threading.Barrier(4)
    results: list[int] = []

    def edit(n: int) -> None:
        start.wait()
        results.append(modes.update(channel, notifier, bucket, task_id=f"task-{n}"))

    threads = [threading.Thread(target=edit, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    posts = slack.calls("chat.postMessage")
    assert len(posts) == 1, f"{len(posts)} storm messages posted"
    assert sorted(results)[-1] == 1 and all(r in (-1, 0, 1) for r in results)
    [message] = slack.parents(channel)
    assert f"<{PUBLIC}/incidents/{incident_id}|#{incident_id}>" in str(message.blocks)
    with session_scope() as session:
        row = session.get(Notification, row_id)
        assert (row.status, row.external_id) == ("sent", f"storm:{message.ts}")


def test_an_edit_while_another_worker_holds_the_lock_posts_nothing(
    redis_client, slack, stormed_row
):
    channel, row_id, _ = stormed_row
    modes = storms(redis_client, [])
    modes.enter(channel)
    redis_client.set(keys.SLACK_STORM_LOCK + channel, "another-worker")
    notifier = SlackNotifier(DEFAULT_TOKEN, api_url=slack.url)
    assert modes.update(channel, notifier, TokenBucket(redis_client), task_id="mine") == -1
    assert slack.requests == []
    with session_scope() as session:
        assert session.get(Notification, row_id).status == DeliveryStatus.DIGESTED


def test_a_quiet_storm_ends_with_one_summary_and_strands_nothing(
    redis_client, slack, stormed_row, monkeypatch
):
    channel, row_id, _ = stormed_row
    modes = storms(redis_client, [])
    modes.enter(channel)
    notifier = SlackNotifier(DEFAULT_TOKEN, api_url=slack.url)
    bucket = TokenBucket(redis_client)
    assert modes.update(channel, notifier, bucket, task_id="t1") == 1
    monkeypatch.setattr(storm_mode, "QUIET", 0.0)
    # A row that joins as the storm ends is not left waiting for a message that is gone.
    with session_scope() as session:
        late = session.get(Notification, row_id)
        late_row = Notification(
            incident_id=late.incident_id, channel=Channel.SLACK, action=Action.UPDATE, step=2,
            target=storm_mode.PREFIX + channel, destination="", status=DeliveryStatus.DIGESTED,
            created_at=datetime.now(UTC),
        )
        session.add(late_row)
        session.flush()
        late_id = late_row.id
    assert modes.update(channel, notifier, bucket, task_id="t2") == 1  # shows the late row
    assert modes.update(channel, notifier, bucket, task_id="t3") == 0  # quiet: ends
    assert not modes.active(channel) and modes.channels() == []
    modes.joined(channel)  # a worker that saw the storm on, a moment late
    assert not modes.active(channel), "a storm that ended is never brought back half-made"
    storm_message, summary = slack.parents(channel)
    assert "Alert storm over: 1 incident," in storm_message.text, "edited to say it is over"
    assert summary.text.startswith(":white_check_mark: Alert storm over: 1 incident in about")
    assert "1 still open" in summary.text
    assert modes.update(channel, notifier, bucket, task_id="t4") == 0
    assert len(slack.calls("chat.postMessage")) == 2, "the storm message and its summary"
    with session_scope() as session:
        assert {session.get(Notification, i).status for i in (row_id, late_id)} == {"sent"}


def test_a_channel_slack_refuses_fails_its_rows_and_leaves_storm_mode(
    redis_client, slack, stormed_row
):
    channel, row_id, _ = stormed_row
    modes = storms(redis_client, [])
    modes.enter(channel)
    slack.fail_next(error="channel_not_found")
    notifier = SlackNotifier(DEFAULT_TOKEN, api_url=slack.url)
    assert modes.update(channel, notifier, TokenBucket(redis_client), task_id="t1") == 1
    assert not modes.active(channel)
    with session_scope() as session:
        row = session.get(Notification, row_id)
        assert row.status == DeliveryStatus.FAILED and "channel_not_found" in row.last_error
