"""Alertmanager payloads as Alertmanager builds them."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

GO_ZERO_TIME = "0001-01-01T00:00:00Z"
T0 = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fingerprint(labels: dict[str, str]) -> str:
    return hashlib.sha1(repr(sorted(labels.items())).encode()).hexdigest()[:16]


def alert(
    status: str = "firing",
    *,
    starts_at: datetime = T0,
    ends_at: datetime | None = None,
    annotations: dict[str, str] | None = None,
    **labels: str,
) -> dict[str, Any]:
    labels = {"alertname": "HighErrorRate", "service": "api", **labels}
    if status == "resolved" and ends_at is None:
        ends_at = starts_at + timedelta(minutes=5)
    return {
        "status": status,
        "labels": labels,
        "annotations": annotations if annotations is not None else {"summary": "5xx above 5%"},
        "startsAt": _iso(starts_at),
        "endsAt": _iso(ends_at) if ends_at else GO_ZERO_TIME,
        "generatorURL": "http://prometheus:9090/graph?g0.expr=up",
        "fingerprint": fingerprint(labels),
    }


def payload(
    *alerts: dict[str, Any],
    receiver: str = "incident",
    group_labels: dict[str, str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    alerts = alerts or (alert(),)
    group_labels = group_labels if group_labels is not None else {
        "alertname": alerts[0]["labels"]["alertname"],
        "service": alerts[0]["labels"].get("service", ""),
    }
    common = dict(alerts[0]["labels"])
    for a in alerts[1:]:
        common = {k: v for k, v in common.items() if a["labels"].get(k) == v}
    group_key = "{}:{" + ", ".join(f'{k}="{v}"' for k, v in sorted(group_labels.items())) + "}"
    body = {
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
        "receiver": receiver,
        "groupLabels": group_labels,
        "commonLabels": common,
        "commonAnnotations": dict(alerts[0]["annotations"]),
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
    }
    body.update(extra)
    return body
