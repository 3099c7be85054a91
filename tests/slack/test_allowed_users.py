"""With `slack.allowed_users` in the rules file, only those Slack users' clicks act;
anyone else is told so, only to them, and nothing changes."""

from __future__ import annotations

import pytest

from incident.rules import RulesError, parse_rules
from tests.conftest import wait_for
from tests.slack.conftest import ALICE, BOB, RULES, button
from tests.slack.test_interactions import click, open_incident
from tests.notifications.support import incident

pytestmark = [pytest.mark.usefixtures("clean_state", "slack_worker"), pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def slack_rules() -> str:
    return RULES + f"slack:\n  allowed_users: [{ALICE['id']}]\n"


def test_only_allowed_users_act_and_others_are_told_politely(slack_api, response_urls):
    opened = open_incident(slack_api)
    url = response_urls.new_url()

    assert click(slack_api, button("incident.resolve", str(opened["id"])), user=BOB,
                 response_url=url).status_code == 200
    [note] = wait_for(lambda: response_urls.notes(url), what="the refusal")
    assert note["text"].startswith("Sorry, you are not on the list")
    assert note["response_type"] == "ephemeral"
    assert incident(slack_api, opened["id"])["status"] == "triggered"

    assert click(slack_api, button("incident.resolve", str(opened["id"])),
                 user=ALICE).status_code == 200
    resolved = wait_for(
        lambda: (i := incident(slack_api, opened["id"]))["status"] == "resolved" and i,
        what="resolved")
    assert resolved["resolved_by"]["user"] == ALICE["id"]


def test_an_allowed_user_that_is_not_a_slack_user_id_is_refused_at_load():
    with pytest.raises(RulesError, match="allowed_users"):
        parse_rules("slack:\n  allowed_users: [alice]\n")
    assert parse_rules("slack:\n  allowed_users: [U024BE7LH]\n").slack.allows("U024BE7LH")
    assert parse_rules("").slack.allows("U0ANYONE1")
