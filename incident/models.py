"""Every table, for Alembic and for any process that loads incidents whole."""

from incident.incidents.models import Alert, AlertGroup, Incident, TimelineEntry
from incident.incidents.outbox import OutboxMessage
from incident.notifications.models import EscalationTimer, Notification, PagerDutyEvent
from incident.remediation.models import RemediationRun
from incident.silences.models import IncidentSilence
from incident.windows.models import MaintenanceWindow

__all__ = [
    "Alert",
    "AlertGroup",
    "EscalationTimer",
    "Incident",
    "IncidentSilence",
    "MaintenanceWindow",
    "Notification",
    "OutboxMessage",
    "PagerDutyEvent",
    "RemediationRun",
    "TimelineEntry",
]
