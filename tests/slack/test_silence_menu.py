"""The Slack ``Silence`` menu silences the incident's group in the real Alertmanager,
as the clicker, once per click however often the click is delivered."""

from __future__ import annotations


import httpx
import pytest

from tests.alertmanager_support import AlertmanagerProcess
from tests.conftest import wait_for
from tests.notifications.support import incident
from tests.slack.conftest import ALICE, menu
from tests.slack.test_interactions import click, open_incident

pytestmark = [
    pytest.mark.alertmanager,
    pytest.mark.usefixtures("clean_state", "slack_worker"),
    pytest.mark.timeout(120),
]


@pytest.fixture(scope="module")
def slack_env(slack_env, real_alertmanager) -> dict[str, str]:
    return {**slack_env, "INCIDENT_ALERTMANAGER_URL": real_alertmanager.url}


def silences_of(alertmanager: AlertmanagerProcess, incident_id: int) -> list[dict]:
    listed = httpx.get(f"{alertmanager.url}/api/v2/silences", timeout=5).json()
    return [s for s in listed
            if f"#{incident_id} " in s["comment"] and s["status"]["state"] == "active"]


def test_the_silence_menu_silences_the_group_as_the_clicker(
    slack_api, real_alertmanager, response_urls
):
    opened = open_incident(slack_api, service="checkout")
    url = response_urls.new_url()
    assert click(slack_api, menu(f"{opened['id']}:4h"), response_url=url).status_code == 200

    [silence] = wait_for(lambda: silences_of(real_alertmanager, opened["id"]),
                         what="the silence in Alertmanager")
    assert silence["createdBy"] == f"slack:{ALICE['id']} (alice)"
    # The group's labels, each `=`: exactly this incident's alerts.
    assert sorted((m["name"], m["value"], m["isEqual"], m["isRegex"])
                  for m in silence["matchers"]) == [
        ("alertname", opened["labels"]["alertname"], True, False),
        ("service", "checkout", True, False),
    ]
    [note] = wait_for(lambda: response_urls.notes(url), what="the ephemeral note")
    assert note["text"] == f"Incident #{opened['id']} is silenced in Alertmanager for 4h."

    shown = wait_for(lambda: (i := incident(slack_api, opened["id"]))["silences"] and i,
                     what="the silence on the incident")
    assert [s["id"] for s in shown["silences"]] == [silence["id"]]
    silenced = [e for e in shown["timeline"] if e["kind"] == "silenced"]
    assert [(e["detail"]["by"], e["detail"]["user"]) for e in silenced] == [("slack", ALICE["id"])]
    assert shown["status"] == "triggered"
