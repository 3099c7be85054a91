"""Maintenance windows end to end: a real api and worker, fake Slack and PagerDuty, a local
remediation target and the real Alertmanager binary; and an in-process context with the
same settings, to apply webhooks and release windows at a chosen time."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
from sqlalchemy import select

from incident.config import Settings
from incident.context import Context
from incident.db import session_scope
from incident.incidents.ingest import ingest_payload
from incident.models import Incident
from incident.rules import load_rules
from incident.windows.suppression import release
from incident.worker.app import publish
from tests.conftest import (
    API_TOKEN, ApiProcess, WorkerProcess, notifiers_env, running_api, running_worker,
)
from tests.fakes.pagerduty import FakePagerDuty
from tests.fakes.slack import FakeSlack
from tests.remediation.target import FakeTarget

CHANNEL = "incidents"
API = {"Authorization": f"Bearer {API_TOKEN}"}

RULES = """
remediations:
  - name: restart-db
    matchers: ['service="db"']
    action: http
    with:
      url: "{target}/services/{{labels.service}}/restart"
      timeout: 5s
    retry: {{attempts: 1}}
escalation:
  SEV1: {{pagerduty: critical, slack: true, ack_timeout: 15m}}
  SEV2: {{pagerduty: error, slack: true, ack_timeout: 15m}}
  SEV3: {{pagerduty: warning, slack: true, ack_timeout: 15m}}
  SEV4: {{slack: true}}
"""


@pytest.fixture(scope="module")
def fake_slack() -> Iterator[FakeSlack]:
    with FakeSlack(channels=(CHANNEL,)) as slack:
        yield slack


@pytest.fixture(scope="module")
def fake_pagerduty() -> Iterator[FakePagerDuty]:
    with FakePagerDuty() as pagerduty:
        yield pagerduty


@pytest.fixture(scope="module")
def target() -> Iterator[FakeTarget]:
    with FakeTarget() as fake:
        yield fake


@pytest.fixture(scope="module")
def windows_env(
    incident_environment, fake_slack, fake_pagerduty, target, real_alertmanager, tmp_path_factory
) -> dict[str, str]:
    rules = tmp_path_factory.mktemp("rules") / "rules.yml"
    rules.write_text(RULES.format(target=target.url))
    return {
        **incident_environment,
        **notifiers_env(fake_slack, fake_pagerduty, CHANNEL),
        "INCIDENT_RULES_FILE": str(rules),
        "INCIDENT_ALERTMANAGER_URL": real_alertmanager.url,
    }


@pytest.fixture(scope="module")
def windows_worker(windows_env, tmp_path_factory) -> Iterator[WorkerProcess]:
    yield from running_worker(windows_env, tmp_path_factory)


@pytest.fixture(scope="module")
def windows_api(windows_env, tmp_path_factory) -> Iterator[ApiProcess]:
    yield from running_api(windows_env, tmp_path_factory)


@pytest.fixture(scope="module")
def local(windows_env) -> Context:
    """This process's context with the worker's settings: what it plans is what the worker's would."""
    with mock.patch.dict(os.environ, windows_env):
        settings = Settings()
    return Context(settings, load_rules(Path(windows_env["INCIDENT_RULES_FILE"])), publish)


def webhook(status: str = "firing", *, starts_at: datetime | None = None,
            **labels: str) -> dict[str, Any]:
    """A one-alert webhook whose group is all of its labels."""
    from tests.factories import T0, alert, payload

    one = alert(status, starts_at=starts_at or T0, **labels)
    return payload(one, group_labels=dict(one["labels"]))


def apply(ctx: Context, body: dict[str, Any]) -> int | None:
    """One webhook applied in-process, as a worker applies it; the incident's id."""
    change = ingest_payload(body, rules=ctx.rules, repeats=ctx.repeats, events=ctx.events)
    return change.incident_id if change else None


def open_incident(ctx: Context, **labels: str) -> int:
    incident_id = apply(ctx, webhook(**labels))
    assert incident_id is not None
    return incident_id


def release_at(ctx: Context, moment: datetime) -> int:
    """The beat job, as if run at ``moment``."""
    return release(ctx.engine, ctx.events, now=moment)


def window_body(*matchers: str, start: timedelta = timedelta(0),
                length: timedelta = timedelta(hours=1), comment: str = "db upgrade") -> dict[str, Any]:
    starts_at = datetime.now(UTC) + start
    return {
        "matchers": list(matchers), "starts_at": starts_at.isoformat(),
        "ends_at": (starts_at + length).isoformat(), "comment": comment,
    }


def create_window(api_url: str, *matchers: str, **when: Any) -> dict[str, Any]:
    response = httpx.post(f"{api_url}/api/maintenance", json=window_body(*matchers, **when),
                          headers=API, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()


def held_back() -> list[int]:
    """Every incident still in maintenance."""
    with session_scope() as session:
        return list(session.scalars(select(Incident.id).where(Incident.in_maintenance)))
