"""Latency histograms through a real receiver, worker, fake Slack and fake PagerDuty."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.factories import alert, payload
from tests.notifications.support import API, post, settled
from tests.conftest import wait_for

pytestmark = [pytest.mark.usefixtures("clean_state", "notifying_worker"), pytest.mark.timeout(120)]

TO_INCIDENT = "incident_webhook_to_incident_seconds"
TO_NOTIFICATION = "incident_webhook_to_notification_seconds"


def scrape(api) -> dict[tuple[str, tuple], float]:
    response = httpx.get(f"{api.url}/metrics", timeout=10)
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def histogram(samples, name: str, **labels: str) -> tuple[float, float]:
    key = tuple(sorted(labels.items()))
    return samples[(f"{name}_count", key)], samples[(f"{name}_sum", key)]


def counted(api, name: str, count: int, **labels: str) -> dict:
    """The scrape once the fleet's histogram has ``count`` observations (flushed each second)."""
    def reached():
        samples = scrape(api)
        return samples if histogram(samples, name, **labels)[0] == count else None

    return wait_for(reached, timeout=20, interval=0.2, what=f"{name}{labels} at {count}")


def test_a_sev1_webhook_is_timed_to_its_incident_its_page_and_its_slack_parent(notifying_api):
    before = scrape(notifying_api)
    assert histogram(before, TO_NOTIFICATION, channel="pagerduty", severity="SEV1") == (0, 0)

    started = time.monotonic()
    post(notifying_api, payload(alert(severity="critical", env="prod")))
    settled(notifying_api)
    wall = time.monotonic() - started

    after = counted(notifying_api, TO_NOTIFICATION, 1, channel="pagerduty", severity="SEV1")
    seconds = histogram(after, TO_NOTIFICATION, channel="pagerduty", severity="SEV1")[1]
    assert 0 < seconds < wall
    after = counted(notifying_api, TO_NOTIFICATION, 1, channel="slack", severity="SEV1")
    assert 0 < histogram(after, TO_NOTIFICATION, channel="slack", severity="SEV1")[1] < wall
    after = counted(notifying_api, TO_INCIDENT, 1)
    to_incident = histogram(after, TO_INCIDENT)[1]
    assert 0 < to_incident < min(seconds, wall)
    # Nothing in another severity's or channel's series.
    assert histogram(after, TO_NOTIFICATION, channel="slack", severity="SEV3") == (0, 0)
    assert histogram(after, TO_NOTIFICATION, channel="email", severity="SEV1") == (0, 0)
    # The same webhook again changes nothing and is not timed.
    post(notifying_api, payload(alert(severity="critical", env="prod")))
    time.sleep(2.5)
    assert histogram(scrape(notifying_api), TO_INCIDENT)[0] == 1


def test_people_are_timed_to_acknowledge_and_resolve_and_their_notifications_are_not(
    notifying_api
):
    firing = alert(severity="critical", env="prod")
    post(notifying_api, payload(firing))
    settled(notifying_api)
    counted(notifying_api, TO_NOTIFICATION, 1, channel="pagerduty", severity="SEV1")

    started = time.monotonic()
    answer = httpx.post(f"{notifying_api.url}/api/incidents/1/acknowledge", headers=API, timeout=10)
    assert answer.status_code == 200, answer.text
    settled(notifying_api)
    after = counted(notifying_api, "incident_time_to_acknowledge_seconds", 1, severity="SEV1")
    opened_to_ack = histogram(after, "incident_time_to_acknowledge_seconds", severity="SEV1")[1]
    assert opened_to_ack > 0
    # The acknowledgement PagerDuty was sent is a person's doing, not a webhook's.
    assert histogram(after, TO_NOTIFICATION, channel="pagerduty", severity="SEV1")[0] == 1

    resolved = payload(alert("resolved", severity="critical", env="prod"))
    post(notifying_api, resolved)
    after = counted(notifying_api, "incident_time_to_resolve_seconds", 1, severity="SEV1")
    opened_to_resolve = histogram(after, "incident_time_to_resolve_seconds", severity="SEV1")[1]
    assert opened_to_ack < opened_to_resolve < opened_to_ack + time.monotonic() - started
    # The resolve PagerDuty was sent is the webhook's: timed.
    counted(notifying_api, TO_NOTIFICATION, 2, channel="pagerduty", severity="SEV1")

    # Alertmanager re-sends the resolution: nothing is resolved, or timed, again.
    post(notifying_api, resolved)
    time.sleep(2.5)
    samples = scrape(notifying_api)
    assert histogram(samples, "incident_time_to_resolve_seconds", severity="SEV1")[0] == 1
    assert histogram(samples, "incident_time_to_acknowledge_seconds", severity="SEV1")[0] == 1
