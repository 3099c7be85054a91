"""What an incident is called, from the notification that opens or refreshes it.

Here rather than in the grouping code so that ``incident rules test`` names an
incident with the very functions the pipeline stores.
"""

from __future__ import annotations

from incident.alerts.schemas import WebhookPayload


def incident_title(payload: WebhookPayload) -> str:
    """The group's alertname followed by its other group labels' values."""
    first = payload.alerts[0].labels
    alertname = (
        payload.group_labels.get("alertname")
        or payload.common_labels.get("alertname")
        or first.get("alertname")
        or payload.receiver
    )
    rest = [v for k, v in sorted(payload.group_labels.items()) if k != "alertname" and v]
    return " ".join([alertname, *rest])


def incident_summary(payload: WebhookPayload) -> str | None:
    summary = payload.common_annotations.get("summary")
    if summary is None:
        summary = next((a.annotations["summary"] for a in payload.alerts if "summary" in a.annotations), None)
    return summary
