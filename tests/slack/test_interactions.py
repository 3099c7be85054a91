"""Clicks on an incident's Slack parent act on it, as the Slack user who clicked,
and reach PagerDuty and the parent; anything not signed by Slack, or replayed,
is refused before it is read."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import wait_for
from tests.factories import alert, payload
from tests.notifications.support import incident, ledger_row, post, settled
from tests.slack.conftest import (
    ALICE,
    BOB,
    block_actions,
    button,
    form,
    menu,
    signed,
)

pytestmark = [pytest.mark.usefixtures("clean_state", "slack_worker"), pytest.mark.timeout(120)]

ACK, RESOLVE = "incident.acknowledge", "incident.resolve"


def open_incident(api, service: str = "api") -> dict:
    post(api, payload(alert(severity="critical", env="prod", service=service)))

    def opened():
        response = httpx.get(f"{api.url}/api/incidents", headers=_API, timeout=10).json()
        return next((i for i in response["items"] if i["labels"].get("service") == service), None)

    found = wait_for(opened, what="the incident")
    return settled(api, found["id"])


def parent(fake_slack, incident_id: int):
    ts = ledger_row(incident_id, "slack")["external_id"]
    return fake_slack.message(ts)


def controls(message) -> dict:
    """The parent's controls: action id -> the element, or {} without any."""
    blocks = [b for b in message.blocks or [] if b["type"] == "actions"]
    return {e["action_id"]: e for block in blocks for e in block["elements"]}


def texts(message) -> str:
    return "\n".join(b["text"]["text"] for b in message.blocks if b["type"] == "section" and "text" in b)


def click(api, action: dict, **options) -> httpx.Response:
    body = form(block_actions(action, **options))
    started = time.monotonic()
    response = httpx.post(f"{api.url}/slack/interactions", content=body, headers=signed(body),
                          timeout=10)
    assert time.monotonic() - started < 3.0
    return response


@pytest.fixture
def pd_actions(fake_pagerduty):
    """The PagerDuty events sent for an incident key during this test."""
    seen = len(fake_pagerduty.events)
    return lambda key: [e["event_action"] for e in fake_pagerduty.events[seen:]
                        if e.get("dedup_key") == key]


def timeline_kinds(shown: dict) -> list[str]:
    return [entry["kind"] for entry in shown["timeline"]]


_API = {"Authorization": "Bearer test-api-token-9b7e"}


def test_an_open_incident_carries_the_buttons_and_the_silence_menu(slack_api, fake_slack):
    opened = open_incident(slack_api)
    shown = controls(parent(fake_slack, opened["id"]))
    assert shown[ACK]["text"]["text"] == "Acknowledge"
    assert shown[ACK]["value"] == str(opened["id"])
    assert shown[RESOLVE]["text"]["text"] == "Resolve"
    menu_element = shown["incident.silence"]
    assert menu_element["type"] == "static_select"
    assert menu_element["placeholder"]["text"] == "Silence"
    assert [o["text"]["text"] for o in menu_element["options"]] == ["1h", "4h", "24h"]


def test_acknowledge_from_slack_acts_as_that_user_reaches_pagerduty_and_edits_the_parent(
    slack_api, fake_slack, pd_actions, response_urls
):
    opened = open_incident(slack_api)
    url = response_urls.new_url()

    response = click(slack_api, button(ACK, str(opened["id"])), response_url=url)
    assert response.status_code == 200, response.text

    acked = wait_for(lambda: (i := incident(slack_api, opened["id"]))["status"] == "acknowledged" and i,
                     what="acknowledged")
    assert acked["acknowledged_by"] == {"by": "slack", "user": "U024BE7LH", "name": "alice"}
    [entry] = [e for e in acked["timeline"] if e["kind"] == "acknowledged"]
    assert entry["detail"] == {"by": "slack", "user": "U024BE7LH", "name": "alice"}
    wait_for(lambda: pd_actions(opened["key"]) == ["trigger", "acknowledge"],
             what="PagerDuty acknowledge")

    def edited():
        message = parent(fake_slack, opened["id"])
        return message if "Acknowledged by <@U024BE7LH>" in texts(message) else None

    message = wait_for(edited, what="the parent edited")
    assert ACK not in controls(message) and RESOLVE in controls(message)
    assert response_urls.notes(url) == []  # it worked: nothing to tell


def test_a_second_click_changes_nothing_and_the_clicker_is_told_who_did_it(
    slack_api, fake_slack, pd_actions, response_urls
):
    opened = open_incident(slack_api)
    assert click(slack_api, button(ACK, str(opened["id"]))).status_code == 200
    wait_for(lambda: incident(slack_api, opened["id"])["status"] == "acknowledged", what="ack")
    url = response_urls.new_url()

    assert click(slack_api, button(ACK, str(opened["id"])), user=BOB,
                 response_url=url).status_code == 200

    [note] = wait_for(lambda: response_urls.notes(url), what="the ephemeral note")
    assert note["text"] == f"Incident #{opened['id']} is already acknowledged by <@U024BE7LH>"
    assert note["response_type"] == "ephemeral" and note["replace_original"] is False
    settled_again = settled(slack_api, opened["id"])
    assert timeline_kinds(settled_again).count("acknowledged") == 1
    assert settled_again["acknowledged_by"]["user"] == ALICE["id"]
    assert pd_actions(opened["key"]) == ["trigger", "acknowledge"]


def test_resolve_from_slack_removes_the_buttons_and_a_second_resolve_is_told(
    slack_api, fake_slack, pd_actions, response_urls
):
    opened = open_incident(slack_api)
    assert click(slack_api, button(RESOLVE, str(opened["id"])), user=BOB).status_code == 200

    resolved = wait_for(lambda: (i := incident(slack_api, opened["id"]))["status"] == "resolved" and i,
                        what="resolved")
    assert resolved["resolved_by"] == {"by": "slack", "user": "U0B0B0B0B", "name": "bob"}
    wait_for(lambda: pd_actions(opened["key"]) == ["trigger", "resolve"],
             what="PagerDuty resolve")
    message = wait_for(
        lambda: (m := parent(fake_slack, opened["id"])) and "Resolved by <@U0B0B0B0B>" in texts(m) and m,
        what="the parent edited")
    assert controls(message) == {}

    url = response_urls.new_url()
    assert click(slack_api, button(ACK, str(opened["id"])), response_url=url).status_code == 200
    [note] = wait_for(lambda: response_urls.notes(url), what="the ephemeral note")
    assert note["text"] == f"Incident #{opened['id']} is already resolved by <@U0B0B0B0B>"
    assert incident(slack_api, opened["id"])["status"] == "resolved"


def test_a_click_acts_only_on_the_incident_its_value_names(slack_api, fake_slack, response_urls):
    first = open_incident(slack_api, "api")
    second = open_incident(slack_api, "db")
    first_ts = ledger_row(first["id"], "slack")["external_id"]

    # The click came from the first incident's message, but its value names the second.
    assert click(slack_api, button(ACK, str(second["id"])),
                 message_ts=first_ts).status_code == 200
    wait_for(lambda: incident(slack_api, second["id"])["status"] == "acknowledged", what="ack")
    assert incident(slack_api, first["id"])["status"] == "triggered"

    url = response_urls.new_url()
    assert click(slack_api, button(RESOLVE, "999999"), response_url=url).status_code == 200
    [note] = wait_for(lambda: response_urls.notes(url), what="the ephemeral note")
    assert note["text"] == "Incident #999999 does not exist (any more): nothing was changed."
    assert incident(slack_api, first["id"])["status"] == "triggered"


def test_the_silence_menu_answers_that_silencing_is_not_set_up(slack_api, response_urls):
    opened = open_incident(slack_api)
    url = response_urls.new_url()
    assert click(slack_api, menu(f"{opened['id']}:4h"), response_url=url).status_code == 200
    [note] = wait_for(lambda: response_urls.notes(url), what="the ephemeral note")
    assert note["text"] == "Silencing is not available: INCIDENT_ALERTMANAGER_URL is not set"
    assert incident(slack_api, opened["id"])["status"] == "triggered"


def test_the_response_url_never_reaches_task_arguments_or_logs(
    slack_api, slack_worker, response_urls
):
    opened = open_incident(slack_api)
    url = response_urls.new_url()
    click(slack_api, button(ACK, str(opened["id"])), response_url=url)
    click(slack_api, button(ACK, str(opened["id"])), response_url=url)
    wait_for(lambda: response_urls.notes(url), what="the ephemeral note")
    secret_part = url.rsplit("/", 1)[1]
    assert secret_part not in slack_worker.log()
    assert secret_part not in slack_api.log()
    assert "incident.interactions.slack_click" in slack_worker.log()
