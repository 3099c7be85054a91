"""Which notifier settings give, the console fallback, and the silence link."""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from structlog.testing import capture_logs

from incident.config import Settings
from incident.integrations import build_pager, build_slack, console
from incident.integrations.base import IncidentView, Pager, SlackPoster
from incident.integrations.pagerduty import PagerDutyNotifier
from incident.integrations.slack import SlackNotifier
from tests.integrations.conftest import make_incident

SLACK_TOKEN = "xoxb-settings-secret-42"
ROUTING_KEY = "ROUTINGKEYSECRET0000000000000042"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Settings read the environment too; these tests say exactly what is set.
    for name in (
        "INCIDENT_SLACK_BOT_TOKEN",
        "INCIDENT_SLACK_CHANNEL",
        "INCIDENT_PAGERDUTY_ROUTING_KEY",
        "INCIDENT_SLACK_API_URL",
        "INCIDENT_PAGERDUTY_EVENTS_URL",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("clean_env")
def test_nothing_configured_builds_nothing() -> None:
    settings = Settings()

    assert build_slack(settings) is None
    assert build_pager(settings) is None


@pytest.mark.usefixtures("clean_env")
def test_slack_needs_both_a_token_and_a_channel() -> None:
    assert build_slack(Settings(slack_bot_token=SLACK_TOKEN)) is None
    assert build_slack(Settings(slack_channel="#incidents")) is None

    notifier = build_slack(Settings(slack_bot_token=SLACK_TOKEN, slack_channel="#incidents"))

    assert isinstance(notifier, SlackNotifier) and isinstance(notifier, SlackPoster)
    assert SLACK_TOKEN not in repr(notifier)


@pytest.mark.usefixtures("clean_env")
def test_a_routing_key_builds_the_pager() -> None:
    notifier = build_pager(Settings(pagerduty_routing_key=ROUTING_KEY))

    assert isinstance(notifier, PagerDutyNotifier) and isinstance(notifier, Pager)
    assert ROUTING_KEY not in repr(notifier)


def test_console_notifier_logs_what_would_be_sent(incident: IncidentView) -> None:
    notifier = console()
    assert isinstance(notifier, SlackPoster) and isinstance(notifier, Pager)

    with capture_logs() as logs:
        ts = notifier.post_parent("#incidents", incident, ledger_id=7)
        reply = notifier.reply("#incidents", ts, "acknowledged", ledger_id=8)
        dedup_key = notifier.trigger(incident, severity="critical")
        notifier.resolve(dedup_key)

    assert (ts, reply, dedup_key) == ("console-7", "console-8", incident.key)
    assert notifier.find_posted("#incidents", ledger_id=7) is None
    assert [entry["event"] for entry in logs] == [
        "would post to slack",
        "would reply in slack thread",
        "would page pagerduty",
        "would page pagerduty",
    ]
    parent = logs[0]
    assert parent["channel"] == "#incidents" and parent["ledger_id"] == 7
    assert parent["title"] == "HighErrorRate api" and parent["severity"] == "SEV1"
    assert parent["status"] == "triggered" and parent["log_level"] == "info"
    assert logs[2]["action"] == "trigger" and logs[2]["pagerduty_severity"] == "critical"
    assert logs[3] == {
        "event": "would page pagerduty",
        "action": "resolve",
        "dedup_key": incident.key,
        "log_level": "info",
    }


def test_silence_link_prefills_alertmanagers_form_with_the_common_labels() -> None:
    incident = make_incident(
        labels={"alertname": "HighErrorRate", "path": '/api/"v1"\\x'},
        external_url="http://alertmanager:9093/",
    )

    url = incident.silence_url()

    assert url is not None
    assert url.startswith("http://alertmanager:9093/#/silences/new?filter=%7B")
    fragment_query = urlsplit(urlsplit(url).fragment).query
    [matchers] = parse_qs(fragment_query)["filter"]
    assert matchers == '{alertname="HighErrorRate",path="/api/\\"v1\\"\\\\x"}'
    assert unquote(url.split("filter=", 1)[1]) == matchers


def test_no_silence_link_without_alertmanager_or_labels() -> None:
    assert make_incident(external_url="").silence_url() is None
    assert make_incident(labels={}).silence_url() is None
