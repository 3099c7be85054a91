"""Alertmanager v4 webhook bodies, as Alertmanager builds them.

Bodies are made once as templates; a distinct group per request is one cheap
``bytes.replace`` of the group id, so the load generator spends its CPU on sending.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

GROUP_SLOT = b"G0000000000G"  # 12 bytes, replaced by a 12-hex-digit group id
_SEVERITIES = ("critical", "warning", "error", "info")


def alertmanager_payload(
    n_alerts: int,
    *,
    receiver: str = "bench",
    group: str = "000000000000",
    severities: tuple[str, ...] = _SEVERITIES,
) -> dict[str, Any]:
    """One notification for group ``group`` of ``n_alerts`` firing alerts.

    Alert i has ``severity=severities[i % len(severities)]``; with the default
    rules any ``critical`` one makes the incident SEV1 (``env="prod"``).
    """
    alerts = []
    for i in range(n_alerts):
        labels = {
            "alertname": "HighErrorRate",
            "service": f"svc-{group}",
            "instance": f"10.0.{i // 256}.{i % 256}:9100",
            "job": "node",
            "env": "prod",
            "severity": severities[i % len(severities)],
        }
        alerts.append(
            {
                "status": "firing",
                "labels": labels,
                "annotations": {
                    "summary": "5xx above 5% for 5 minutes",
                    "description": f"{labels['instance']} answers 7.3% of requests with a 5xx",
                    "runbook_url": "https://runbooks.example/HighErrorRate",
                },
                "startsAt": "2026-11-22T03:00:00.000000Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus:9090/graph?g0.expr=rate%28http_5xx%5B5m%5D%29",
                # Alertmanager's fingerprint is 16 hex digits of a label hash; the group id
                # is kept in it so that a templated body still has distinct fingerprints.
                "fingerprint": group[:12] + f"{i:04x}",
            }
        )
    group_labels = {"alertname": "HighErrorRate", "service": f"svc-{group}"}
    common = {
        k: v for k, v in alerts[0]["labels"].items() if all(a["labels"][k] == v for a in alerts)
    }
    return {
        "receiver": receiver,
        "status": "firing",
        "alerts": alerts,
        "groupLabels": group_labels,
        "commonLabels": common,
        "commonAnnotations": {
            "summary": "5xx above 5% for 5 minutes",
            "runbook_url": "https://runbooks.example/HighErrorRate",
        },
        "externalURL": "http://alertmanager:9093",
        "version": "4",
        "groupKey": '{}/{severity=~"critical|warning|error|info"}:'
        f'{{alertname="HighErrorRate", service="svc-{group}"}}',
        "truncatedAlerts": 0,
    }


def body(
    n_alerts: int,
    *,
    receiver: str = "bench",
    group: str = "000000000000",
    severities: tuple[str, ...] = _SEVERITIES,
) -> bytes:
    return orjson.dumps(
        alertmanager_payload(n_alerts, receiver=receiver, group=group, severities=severities)
    )


class GroupBodies:
    """Bodies for distinct groups: the i-th call's group id is ``{prefix}{i}`` in hex."""

    def __init__(
        self,
        n_alerts: int,
        receiver: str,
        prefix: int = 0,
        *,
        severities: tuple[str, ...] = _SEVERITIES,
    ) -> None:
        self._template = body(
            n_alerts, receiver=receiver, group=GROUP_SLOT.decode(), severities=severities
        )
        self._prefix = prefix << 32

    @property
    def template(self) -> bytes:
        """The body with ``GROUP_SLOT`` where each group's id goes (for wrk to fill in)."""
        return self._template

    def __call__(self, i: int) -> bytes:
        return self._template.replace(GROUP_SLOT, self.group(i).encode())

    def group(self, i: int) -> str:
        """The i-th body's group id: its service label is ``svc-{group}``, in the title too."""
        return "%012x" % (self._prefix | i)

    def payload(self, i: int) -> dict[str, Any]:
        return orjson.loads(self(i))


def group_id(text: str) -> int:
    """A stable 16-bit number for a name, to keep groups of different runs apart."""
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:2], "big")
