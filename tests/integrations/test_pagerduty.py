"""The real PagerDutyNotifier (python-pagerduty on httpx2) against the fake
Events API over TLS."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import replace

import pytest

from incident.config import ConfigurationError
from incident.integrations.base import (
    AlertView,
    IncidentView,
    PermanentDeliveryError,
    RateLimited,
    TransientDeliveryError,
)
from incident.integrations.pagerduty import PagerDutyNotifier
from tests.fakes.pagerduty import FakePagerDuty


def test_trigger_sends_one_event_keyed_by_the_incident(
    pager: PagerDutyNotifier, fake_pagerduty: FakePagerDuty, incident: IncidentView
) -> None:
    dedup_key = pager.trigger(incident, severity="critical")

    assert dedup_key == incident.key
    [event] = fake_pagerduty.events
    assert event["routing_key"] == fake_pagerduty.routing_key
    assert event["event_action"] == "trigger"
    assert event["dedup_key"] == incident.key
    payload = event["payload"]
    assert payload["summary"] == "[SEV1] HighErrorRate api — 5xx ratio above 5% for 10 minutes"
    assert payload["severity"] == "critical"
    assert payload["source"] == "api-1:9090"
    assert payload["component"] == "api" and payload["class"] == "HighErrorRate"
    assert payload["timestamp"] == "2024-05-01T12:30:00+00:00"
    details = payload["custom_details"]
    assert details["labels"] == incident.labels
    assert details["annotations"] == incident.annotations
    assert details["alerts"][0] == {
        "fingerprint": "a1b2c3d4e5f60718",
        "status": "firing",
        "labels": incident.alerts[0].labels,
    }
    assert details["alerts_firing"] == 1 and details["alerts_total"] == 2
    assert event["links"][0] == {"href": incident.incident_url, "text": "Incident #42"}
    assert {"href": incident.annotations["runbook_url"], "text": "Runbook"} in event["links"]
    assert event["client"] == "incident" and event["client_url"] == incident.incident_url


def test_summary_is_cut_to_pagerduty_limit(
    pager: PagerDutyNotifier, fake_pagerduty: FakePagerDuty, incident: IncidentView
) -> None:
    pager.trigger(replace(incident, summary="s" * 5000), severity="error")

    [event] = fake_pagerduty.events
    assert len(event["payload"]["summary"]) == 1024
    assert event["payload"]["summary"].endswith("…")
    assert event["payload"]["severity"] == "error"


def test_source_falls_back_to_service_then_to_incident(
    pager: PagerDutyNotifier, fake_pagerduty: FakePagerDuty, incident: IncidentView
) -> None:
    pager.trigger(replace(incident, labels={"service": "api"}), severity="warning")
    pager.trigger(replace(incident, labels={}), severity="info")

    assert [e["payload"]["source"] for e in fake_pagerduty.events] == ["api", "incident"]


def test_acknowledge_and_resolve_reuse_the_dedup_key(
    pager: PagerDutyNotifier, fake_pagerduty: FakePagerDuty, incident: IncidentView
) -> None:
    pager.acknowledge(incident.key)
    pager.resolve(incident.key)

    assert [(e["event_action"], e["dedup_key"]) for e in fake_pagerduty.events] == [
        ("acknowledge", incident.key),
        ("resolve", incident.key),
    ]
    assert all("payload" not in event for event in fake_pagerduty.events)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_transient_after_exactly_one_request(
    pager: PagerDutyNotifier, fake_pagerduty: FakePagerDuty, incident: IncidentView, status: int
) -> None:
    fake_pagerduty.fail_next(10, status=status)

    started = time.monotonic()
    with pytest.raises(TransientDeliveryError) as caught:
        pager.trigger(incident, severity="critical")

    assert time.monotonic() - started < 0.5  # the client's 1.5 s back-off never ran
    assert len(fake_pagerduty.requests) == 1
    assert caught.value.code == str(status) and caught.value.retryable


def test_rate_limit_is_raised_at_once_with_the_servers_hint(
    pager: PagerDutyNotifier, fake_pagerduty: FakePagerDuty, incident: IncidentView
) -> None:
    fake_pagerduty.fail_next(10, status=429, retry_after=3)

    started = time.monotonic()
    with pytest.raises(RateLimited) as caught:
        pager.resolve(incident.key)

    assert time.monotonic() - started < 0.5
    assert len(fake_pagerduty.requests) == 1
    assert caught.value.retry_after == 3.0


def test_rate_limit_without_a_hint_leaves_retry_after_unset(
    pager: PagerDutyNotifier, fake_pagerduty: FakePagerDuty, incident: IncidentView
) -> None:
    fake_pagerduty.fail_next(1, status=429)

    with pytest.raises(RateLimited) as caught:
        pager.acknowledge(incident.key)

    assert caught.value.retry_after is None


def test_an_invalid_event_is_permanent_with_pagerdutys_words(
    pager: PagerDutyNotifier, fake_pagerduty: FakePagerDuty, incident: IncidentView
) -> None:
    fake_pagerduty.fail_next(1, status=400, error="'payload.source' is missing or blank")

    with pytest.raises(PermanentDeliveryError) as caught:
        pager.trigger(incident, severity="critical")

    assert "Event object is invalid" in str(caught.value)
    assert "'payload.source' is missing or blank" in str(caught.value)
    assert caught.value.code == "400" and not caught.value.retryable
    assert len(fake_pagerduty.requests) == 1


def test_a_wrong_routing_key_is_permanent_and_never_echoed(
    fake_pagerduty: FakePagerDuty, incident: IncidentView
) -> None:
    wrong_key = "WRONGKEY0000000000000000000SECRET"
    notifier = PagerDutyNotifier(
        wrong_key, events_url=fake_pagerduty.url, ca_bundle=fake_pagerduty.ca_path
    )

    with pytest.raises(PermanentDeliveryError, match="Invalid routing key") as caught:
        notifier.trigger(incident, severity="critical")

    assert wrong_key not in str(caught.value) and wrong_key not in repr(notifier)


def test_an_unknown_severity_is_a_programming_error(
    pager: PagerDutyNotifier, fake_pagerduty: FakePagerDuty, incident: IncidentView
) -> None:
    with pytest.raises(ValueError, match="severity"):
        pager.trigger(incident, severity="SEV1")
    assert fake_pagerduty.requests == []


def test_megabytes_of_labels_still_make_an_event_under_512_kb(
    pager: PagerDutyNotifier, fake_pagerduty: FakePagerDuty, incident: IncidentView
) -> None:
    huge = {f"label_{n:04d}": "v" * 2000 for n in range(1000)}  # 2 MB
    many_alerts = tuple(
        AlertView(f"fp{n:012d}", "firing", labels=huge if n == 0 else {"n": str(n)})
        for n in range(5000)
    )
    incident = replace(
        incident,
        labels={**incident.labels, **huge},
        annotations={"description": "d" * 2_000_000, "runbook_url": "https://r/" + "x" * 100_000},
        alerts=many_alerts,
    )

    pager.trigger(incident, severity="critical")

    [size] = fake_pagerduty.event_sizes
    assert size < 512 * 1024
    [event] = fake_pagerduty.events
    details = event["payload"]["custom_details"]
    assert details["details_truncated"] is True and "alerts" not in details
    assert details["labels"]["alertname"] == "HighErrorRate"
    assert details["alerts_total"] == 5000 and details["labels_omitted"] == 806
    assert all(link["text"] != "Runbook" for link in event["links"])  # too long to link
    assert len(json.dumps(event)) < 512 * 1024


def test_a_moderately_large_incident_keeps_its_alerts_but_sheds_their_labels(
    pager: PagerDutyNotifier, fake_pagerduty: FakePagerDuty, incident: IncidentView
) -> None:
    big_labels = {f"label_{n}": "v" * 400 for n in range(200)}  # ~85 kB per alert
    alerts = tuple(AlertView(f"fp{n}", "firing", labels=big_labels) for n in range(10))

    pager.trigger(replace(incident, alerts=alerts), severity="critical")

    details = fake_pagerduty.events[0]["payload"]["custom_details"]
    assert details["alerts"] == [{"fingerprint": f"fp{n}", "status": "firing"} for n in range(10)]
    assert details["labels"] == incident.labels and "details_truncated" not in details


def test_a_slow_answer_times_out_as_transient(
    fake_pagerduty: FakePagerDuty, incident: IncidentView
) -> None:
    notifier = PagerDutyNotifier(
        fake_pagerduty.routing_key,
        events_url=fake_pagerduty.url,
        ca_bundle=fake_pagerduty.ca_path,
        timeout=0.5,
    )
    fake_pagerduty.delay_next(1, 5)

    started = time.monotonic()
    with pytest.raises(TransientDeliveryError):
        notifier.trigger(incident, severity="critical")

    assert time.monotonic() - started < 2
    assert len(fake_pagerduty.requests) == 1


def test_a_refused_connection_is_transient_without_sleeping(incident: IncidentView) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    notifier = PagerDutyNotifier("R" * 32, events_url=f"https://127.0.0.1:{port}")

    started = time.monotonic()
    with pytest.raises(TransientDeliveryError, match="ConnectError"):
        notifier.resolve("some-key")

    assert time.monotonic() - started < 0.5


def test_events_url_must_be_https() -> None:
    with pytest.raises(ConfigurationError, match="INCIDENT_PAGERDUTY_EVENTS_URL"):
        PagerDutyNotifier("R" * 32, events_url="http://events.example.com")
