"""Every link sent to people opens the incident's console page,
INCIDENT_PUBLIC_URL/incidents/{id}: Slack's parent, PagerDuty's event, remediations."""

from __future__ import annotations

import json

from incident.config import incident_page_url
from incident.db import session_scope
from incident.incidents.models import Incident
from incident.integrations.pagerduty import PagerDutyNotifier
from incident.integrations.slack_blocks import render_parent
from incident.notifications.views import incident_view
from tests.console.conftest import open_incident
from tests.fakes.pagerduty import DEFAULT_ROUTING_KEY, FakePagerDuty

PUBLIC_URL = "https://incident.example.com/"


def view_of(incident_id: int):
    with session_scope() as session:
        return incident_view(session.get(Incident, incident_id), PUBLIC_URL)


def test_the_page_url_is_the_public_url_and_the_id():
    assert incident_page_url(PUBLIC_URL, 7) == "https://incident.example.com/incidents/7"
    assert incident_page_url("http://127.0.0.1:8080", 7) == "http://127.0.0.1:8080/incidents/7"


def test_slack_links_to_the_console_page(clean_state):
    incident_id = open_incident(1)
    _, blocks = render_parent(view_of(incident_id))
    rendered = json.dumps(blocks)
    assert f"<https://incident.example.com/incidents/{incident_id}|Incident #{incident_id}>" \
        in rendered
    assert "/api/incidents" not in rendered


def test_pagerduty_links_to_the_console_page(clean_state):
    incident_id = open_incident(1)
    with FakePagerDuty() as fake:
        notifier = PagerDutyNotifier(DEFAULT_ROUTING_KEY, events_url=fake.url,
                                     ca_bundle=fake.ca_path, timeout=5)
        notifier.trigger(view_of(incident_id), severity="error")
        [event] = fake.events
    url = f"https://incident.example.com/incidents/{incident_id}"
    assert event["links"][0] == {"href": url, "text": f"Incident #{incident_id}"}
    assert event["client_url"] == url
