"""The notifier for when neither Slack nor PagerDuty is configured (``incident
dev``, a first try): every notification becomes a structured log line saying
what would have been sent, so the whole pipeline can be watched without
credentials.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from incident.integrations.base import IncidentView
from incident.integrations.email import subject

log = structlog.get_logger("incident.integrations.console")


class ConsoleNotifier:
    """Both ``SlackPoster`` and ``Pager``; ids are synthetic but stable."""

    def post_parent(self, channel: str, incident: IncidentView, *, ledger_id: int) -> str:
        log.info(
            "would post to slack",
            channel=channel,
            ledger_id=ledger_id,
            **_incident_fields(incident),
        )
        return f"console-{ledger_id}"

    def update_parent(self, channel: str, ts: str, incident: IncidentView) -> None:
        log.info("would update slack message", channel=channel, ts=ts, **_incident_fields(incident))

    def reply(self, channel: str, thread_ts: str, text: str, *, ledger_id: int) -> str:
        log.info(
            "would reply in slack thread",
            channel=channel,
            thread_ts=thread_ts,
            text=text,
            ledger_id=ledger_id,
        )
        return f"console-{ledger_id}"

    def post_digest(
        self, channel: str, lines: list[str], *, ledger_id: int, covers: Sequence = ()
    ) -> str:
        log.info("would post slack digest", channel=channel, lines=lines, ledger_id=ledger_id)
        return f"console-{ledger_id}"

    def find_digested(
        self, channel: str, *, rows: Sequence[tuple[int, str]], oldest: float | None = None
    ) -> dict[int, str]:
        return {}

    def find_posted(
        self,
        channel: str,
        *,
        ledger_id: int,
        thread_ts: str | None = None,
        oldest: float | None = None,
    ) -> str | None:
        # Nothing is kept, so nothing is found: a recovered send logs again,
        # which is harmless for log lines.
        return None

    def send_mail(self, to: str, incident: IncidentView, text: str, *, ledger_id: int) -> str:
        """What the email channel would send (INCIDENT_SMTP_URL unset)."""
        log.info(
            "would send email",
            to=to,
            subject=subject(incident),
            text=text,
            ledger_id=ledger_id,
            **_incident_fields(incident),
        )
        return f"console-{ledger_id}"

    def trigger(self, incident: IncidentView, *, severity: str) -> str:
        log.info(
            "would page pagerduty",
            action="trigger",
            dedup_key=incident.key,
            pagerduty_severity=severity,
            **_incident_fields(incident),
        )
        return incident.key

    def acknowledge(self, dedup_key: str) -> None:
        log.info("would page pagerduty", action="acknowledge", dedup_key=dedup_key)

    def resolve(self, dedup_key: str) -> None:
        log.info("would page pagerduty", action="resolve", dedup_key=dedup_key)


def _incident_fields(incident: IncidentView) -> dict[str, object]:
    return {
        "incident_id": incident.id,
        "title": incident.title,
        "summary": incident.summary,
        "severity": incident.severity,
        "status": incident.status,
        "flapping": incident.flapping,
        "alerts_firing": len(incident.firing_alerts),
        "incident_url": incident.incident_url,
    }
