"""Incidents about incident itself (backups failing, the alerting pipeline silent).

They go through the normal pipeline as Alertmanager notifications would, so
they are grouped, deduplicated, escalated and paged like any other incident,
and their resolution works the same way. Each problem is one alert whose
``startsAt`` is fixed for an episode, so repeating the check repeats the same
notification, which changes nothing.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import redis

from incident import keys

from incident.rules import Severity
from incident.rules.schemas import SEVERITY_LABEL

RECEIVER = "incident"
SOURCE_LABEL = "incident_internal"
_EPISODE = keys.INTERNAL_EPISODE
_GO_ZERO_TIME = "0001-01-01T00:00:00Z"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def internal_payload(
    alertname: str,
    *,
    firing: bool,
    severity: Severity,
    summary: str,
    description: str,
    since: datetime,
    now: datetime,
    external_url: str,
) -> dict:
    """An Alertmanager v4 webhook payload for one internal alert."""
    labels = {"alertname": alertname, SOURCE_LABEL: "true", SEVERITY_LABEL: severity.value}
    annotations = {"summary": summary, "description": description}
    status = "firing" if firing else "resolved"
    return {
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{alertname}"}}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": RECEIVER,
        "groupLabels": {"alertname": alertname},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": external_url,
        "alerts": [
            {
                "status": status,
                "labels": labels,
                "annotations": annotations,
                "startsAt": _iso(since),
                "endsAt": _GO_ZERO_TIME if firing else _iso(now),
                "generatorURL": "",
                "fingerprint": hashlib.sha256(alertname.encode()).hexdigest()[:16],
            }
        ],
    }


class InternalAlerts:
    """Builds firing/resolved notifications, remembering when each episode began."""

    def __init__(self, client: redis.Redis, external_url: str) -> None:
        self.client = client
        self.external_url = external_url

    def firing(
        self, alertname: str, *, severity: Severity, summary: str, description: str,
        now: datetime | None = None,
    ) -> dict:
        now = now or datetime.now(UTC)
        # The episode's start is kept, so every later check sends the same alert.
        self.client.set(_EPISODE + alertname, now.timestamp(), nx=True)
        since = datetime.fromtimestamp(float(self.client.get(_EPISODE + alertname)), UTC)
        return internal_payload(
            alertname, firing=True, severity=severity, summary=summary,
            description=description, since=since, now=now, external_url=self.external_url,
        )

    def resolved(self, alertname: str, *, severity: Severity, summary: str,
                 now: datetime | None = None) -> dict | None:
        """The resolution of the episode in progress; None when none is."""
        now = now or datetime.now(UTC)
        started = self.client.get(_EPISODE + alertname)
        if started is None:
            return None
        since = datetime.fromtimestamp(float(started), UTC)
        return internal_payload(
            alertname, firing=False, severity=severity, summary=summary, description="",
            since=since, now=now, external_url=self.external_url,
        )

    def end_episode(self, alertname: str) -> None:
        """Once the resolution is applied: the next failure starts a new episode."""
        self.client.delete(_EPISODE + alertname)
