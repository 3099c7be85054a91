"""`incident rules test` predicts exactly what the pipeline stores.

Each payload goes through ``assess`` and through the real ingest path on the
test database; the title, summary, severity and remediation runs must agree,
and must be the ones the case expects, so a shared mistake fails too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select

from incident.alerts.schemas import WebhookPayload
from incident.cli.rules import assess
from incident.db import session_scope
from incident.incidents.events import EventBus
from incident.incidents.ingest import ingest_payload
from incident.incidents.models import Incident
from incident.incidents.repeats import RepeatCache
from incident.notifications.ledger import NotificationPlanner
from incident.notifications.planning import Channels
from incident.remediation.engine import RemediationScheduler
from incident.remediation.models import RemediationRun
from incident.rules import Rules, parse_rules
from tests.factories import GO_ZERO_TIME, fingerprint

RULES = """
severity:
  default: SEV4
  rules:
    - matchers: ['severity="critical"', 'env="prod"']
      severity: SEV1
    - matchers: ['severity="critical"']
      severity: SEV2
    - matchers: ['severity="warning"']
      severity: SEV3
remediations:
  - name: restart-service
    matchers: ['alertname="HighErrorRate"']
    action: http
    with: {url: "http://127.0.0.1:9/services/{labels.service}/restart"}
  - name: page-payments
    matchers: ['team="payments"']
    action: http
    with: {url: "http://127.0.0.1:9/teams/payments/page"}
  - name: flush-cache
    matchers: ['alertname="CacheFull"']
    action: http
    with: {url: "http://127.0.0.1:9/cache/flush"}
"""


def alert(status: str = "firing", *, summary: str | None = None, **labels: str) -> dict[str, Any]:
    # No labels added behind the caller's back: some cases need no alertname at all.
    return {
        "status": status,
        "labels": labels,
        "annotations": {"summary": summary} if summary is not None else {},
        "startsAt": "2026-11-22T03:00:00Z",
        "endsAt": "2026-11-22T03:05:00Z" if status == "resolved" else GO_ZERO_TIME,
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": fingerprint(labels),
    }


def payload(
    *alerts: dict[str, Any],
    group_labels: dict[str, str],
    common_annotations: dict[str, str] | None = None,
    receiver: str = "incident",
) -> dict[str, Any]:
    """As Alertmanager builds it: common labels are those every alert shares."""
    common = dict(alerts[0]["labels"])
    for each in alerts[1:]:
        common = {k: v for k, v in common.items() if each["labels"].get(k) == v}
    return {
        "version": "4",
        "groupKey": "{}:{" + ", ".join(f'{k}="{v}"' for k, v in sorted(group_labels.items())) + "}",
        "truncatedAlerts": 0,
        "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
        "receiver": receiver,
        "groupLabels": group_labels,
        "commonLabels": common,
        "commonAnnotations": common_annotations or {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
    }


@dataclass(frozen=True)
class Case:
    raw: dict[str, Any]
    title: str
    summary: str | None
    severity: str
    remediations: tuple[str, ...]


CASES = {
    "title-from-several-group-labels": Case(
        payload(
            alert(alertname="HighErrorRate", service="api", cluster="eu-1", severity="critical",
                  env="prod", instance="a"),
            alert(alertname="HighErrorRate", service="api", cluster="eu-1", severity="critical",
                  env="prod", instance="b"),
            group_labels={"alertname": "HighErrorRate", "service": "api", "cluster": "eu-1"},
            common_annotations={"summary": "5xx above 5%"},
        ),
        title="HighErrorRate eu-1 api",
        summary="5xx above 5%",
        severity="SEV1",
        remediations=("restart-service",),
    ),
    "no-group-labels-takes-the-common-alertname": Case(
        payload(
            alert(alertname="CacheFull", service="cache", severity="warning"),
            group_labels={},
        ),
        title="CacheFull",
        summary=None,
        severity="SEV3",
        remediations=("flush-cache",),
    ),
    "no-alertname-anywhere-takes-the-receiver": Case(
        payload(
            alert(job="node", instance="db-1"),
            alert(job="node", instance="db-2"),
            group_labels={"job": "node"},
            receiver="ops-pager",
        ),
        title="ops-pager node",
        summary=None,
        severity="SEV4",
        remediations=(),
    ),
    "alertname-only-on-the-first-alert": Case(
        payload(
            alert(alertname="DiskFull", service="api", severity="warning"),
            alert(alertname="InodesFull", service="api", severity="warning"),
            group_labels={"service": "api"},
        ),
        title="DiskFull api",
        summary=None,
        severity="SEV3",
        remediations=(),
    ),
    "empty-group-label-value-is-left-out": Case(
        payload(
            alert(alertname="HighErrorRate", severity="warning"),
            group_labels={"alertname": "HighErrorRate", "service": ""},
        ),
        title="HighErrorRate",
        summary=None,
        severity="SEV3",
        remediations=("restart-service",),
    ),
    "summary-on-one-alert-only": Case(
        payload(
            alert(alertname="QueueBacklog", queue="mail"),
            alert(alertname="QueueBacklog", queue="sms", summary="sms queue over 10k"),
            group_labels={"alertname": "QueueBacklog"},
        ),
        title="QueueBacklog",
        summary="sms queue over 10k",
        severity="SEV4",
        remediations=(),
    ),
    "a-resolved-alert-does-not-count-however-bad": Case(
        payload(
            alert(alertname="HighErrorRate", service="api", severity="warning", instance="a"),
            alert("resolved", alertname="HighErrorRate", service="api", severity="critical",
                  env="prod", instance="b"),
            group_labels={"alertname": "HighErrorRate", "service": "api"},
        ),
        title="HighErrorRate api",
        summary=None,
        severity="SEV3",
        remediations=("restart-service",),
    ),
    "worst-of-several-severities": Case(
        payload(
            alert(alertname="Latency", service="web", severity="info"),
            alert(alertname="Latency", service="web", severity="warning"),
            alert(alertname="Latency", service="web", severity="critical", env="staging"),
            group_labels={"alertname": "Latency", "service": "web"},
        ),
        title="Latency web",
        summary=None,
        severity="SEV2",
        remediations=(),
    ),
    "two-remediations-match": Case(
        payload(
            alert(alertname="HighErrorRate", service="checkout", team="payments",
                  severity="critical", instance="a"),
            alert(alertname="HighErrorRate", service="checkout", team="payments",
                  severity="critical", instance="b"),
            group_labels={"alertname": "HighErrorRate", "service": "checkout"},
        ),
        title="HighErrorRate checkout",
        summary=None,
        severity="SEV2",
        remediations=("page-payments", "restart-service"),
    ),
    "a-label-not-on-every-alert-is-not-matched": Case(
        payload(
            alert(alertname="HighErrorRate", service="checkout", team="payments"),
            alert(alertname="HighErrorRate", service="checkout", team="search"),
            group_labels={"alertname": "HighErrorRate", "service": "checkout"},
        ),
        title="HighErrorRate checkout",
        summary=None,
        severity="SEV4",
        remediations=("restart-service",),
    ),
    "incident-severity-label-wins-over-the-rules": Case(
        payload(
            alert(alertname="BackupMissing", severity="info", incident_severity="SEV1"),
            group_labels={"alertname": "BackupMissing"},
            common_annotations={"summary": "no backup for 26h"},
        ),
        title="BackupMissing",
        summary="no backup for 26h",
        severity="SEV1",
        remediations=(),
    ),
}


@pytest.fixture(scope="module")
def rules() -> Rules:
    return parse_rules(RULES)


def pipeline_events(rules: Rules) -> EventBus:
    """What a worker's context subscribes: notification planning and remediation runs."""
    channels = Channels(slack=False, slack_default_channel=None, pagerduty=False)
    return EventBus(
        NotificationPlanner(rules, channels), RemediationScheduler(rules, "http://127.0.0.1:8080")
    )


def predicted(rules: Rules, raw: dict[str, Any]) -> dict[str, Any]:
    verdict = assess(rules, WebhookPayload.model_validate(raw))
    return {
        "title": verdict["title"],
        "summary": verdict["summary"],
        "severity": verdict["severity"],
        "remediations": sorted(each["name"] for each in verdict["remediations"]),
    }


def stored(incident_id: int) -> dict[str, Any]:
    with session_scope() as session:
        incident = session.get(Incident, incident_id)
        assert incident is not None
        names = session.scalars(
            select(RemediationRun.name).where(RemediationRun.incident_id == incident_id)
        )
        return {
            "title": incident.title,
            "summary": incident.summary,
            "severity": str(incident.severity),
            "remediations": sorted(names),
        }


@pytest.mark.parametrize("case", [pytest.param(case, id=name) for name, case in CASES.items()])
def test_prediction_is_what_the_pipeline_stores(
    case: Case, rules: Rules, clean_state: None, redis_client
) -> None:
    prediction = predicted(rules, case.raw)
    change = ingest_payload(
        case.raw, rules=rules, repeats=RepeatCache(redis_client), events=pipeline_events(rules)
    )
    assert change is not None and change.incident_id is not None

    assert prediction == stored(change.incident_id)
    assert prediction == {
        "title": case.title,
        "summary": case.summary,
        "severity": case.severity,
        "remediations": sorted(case.remediations),
    }


def test_nothing_firing_predicts_no_incident_and_none_opens(
    rules: Rules, clean_state: None, redis_client
) -> None:
    raw = payload(
        alert("resolved", alertname="HighErrorRate", service="api", severity="critical"),
        group_labels={"alertname": "HighErrorRate", "service": "api"},
    )
    prediction = predicted(rules, raw)
    change = ingest_payload(
        raw, rules=rules, repeats=RepeatCache(redis_client), events=pipeline_events(rules)
    )
    assert change is not None and change.incident_id is None
    assert (prediction["severity"], prediction["remediations"]) == (None, [])
    with session_scope() as session:
        assert session.scalars(select(Incident)).first() is None
