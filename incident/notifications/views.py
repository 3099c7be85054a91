"""An incident as the integrations see it: plain data, no ORM."""

from __future__ import annotations

from incident.config import incident_page_url
from incident.incidents.models import Incident
from incident.integrations.base import AlertView, IncidentView


def incident_view(incident: Incident, public_url: str) -> IncidentView:
    firing_first = sorted(incident.alerts, key=lambda a: (a.status != "firing", a.id or 0))
    common_annotations = _common(a.annotations for a in incident.alerts)
    return IncidentView(
        id=incident.id,
        key=incident.key,
        title=incident.title,
        summary=incident.summary,
        severity=incident.severity,
        status=incident.status,
        flapping=incident.flapping,
        labels=dict(incident.labels),
        annotations=common_annotations,
        alerts=tuple(
            AlertView(
                fingerprint=a.fingerprint,
                status=a.status,
                labels=dict(a.labels),
                annotations=dict(a.annotations),
                generator_url=a.generator_url,
            )
            for a in firing_first
        ),
        external_url=incident.external_url,
        incident_url=incident_page_url(public_url, incident.id),
        created_at=incident.created_at,
        acknowledged_by=dict(incident.acknowledged_by) if incident.acknowledged_by else None,
        resolved_by=dict(incident.resolved_by) if incident.resolved_by else None,
    )


def _common(mappings) -> dict[str, str]:
    items = iter(mappings)
    common = dict(next(items, {}))
    for other in items:
        common = {k: v for k, v in common.items() if other.get(k) == v}
    return common
