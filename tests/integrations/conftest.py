"""Fakes and a sample incident for the integration adapters. Nothing here needs
PostgreSQL or Redis: these tests never request the session fixtures that start
them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from incident.integrations.base import AlertView, IncidentView
from incident.integrations.pagerduty import PagerDutyNotifier
from incident.integrations.slack import SlackNotifier
from tests.fakes.pagerduty import FakePagerDuty
from tests.fakes.slack import FakeSlack

LABELS = {
    "alertname": "HighErrorRate",
    "service": "api",
    "instance": "api-1:9090",
    "env": "prod",
    "severity": "critical",
    "team": "payments",
}


def make_incident(**changes: Any) -> IncidentView:
    incident = IncidentView(
        id=42,
        key="4f2c9e-incident-key",
        title="HighErrorRate api",
        summary="5xx ratio above 5% for 10 minutes",
        severity="SEV1",
        status="triggered",
        flapping=False,
        labels=dict(LABELS),
        annotations={
            "summary": "5xx ratio above 5% for 10 minutes",
            "description": "The api answers 7.3% of requests with a 5xx.",
            "runbook_url": "https://runbooks.example.com/high-error-rate",
        },
        alerts=(
            AlertView(
                fingerprint="a1b2c3d4e5f60718",
                status="firing",
                labels={**LABELS, "pod": "api-7d9f"},
                annotations={"summary": "pod api-7d9f"},
                generator_url="http://prometheus:9090/graph?g0.expr=rate%28x%29&g0.tab=1",
            ),
            AlertView(fingerprint="0f1e2d3c4b5a6978", status="resolved", labels=dict(LABELS)),
        ),
        external_url="http://alertmanager:9093",
        incident_url="http://incident.example.com/incidents/42",
        created_at=datetime(2024, 5, 1, 12, 30, tzinfo=UTC),
    )
    return replace(incident, **changes)


@pytest.fixture
def incident() -> IncidentView:
    return make_incident()


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


@pytest.fixture
def slack(fake_slack: FakeSlack) -> SlackNotifier:
    return SlackNotifier(fake_slack.token, api_url=fake_slack.url, timeout=5)


@pytest.fixture
def fake_pagerduty() -> Iterator[FakePagerDuty]:
    with FakePagerDuty() as fake:
        yield fake


@pytest.fixture
def pager(fake_pagerduty: FakePagerDuty) -> Iterator[PagerDutyNotifier]:
    notifier = PagerDutyNotifier(
        fake_pagerduty.routing_key,
        events_url=fake_pagerduty.url,
        ca_bundle=fake_pagerduty.ca_path,
        timeout=5,
    )
    yield notifier
    notifier.close()
