"""Block Kit for a channel's storm message and its closing summary (pure).

A storm message counts every incident of the storm by state, severity and
alertname, and lists the latest incidents with a link to each one's console
page; what does not fit is counted and left to the console, so the message
always stays within Slack's block and text limits.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from incident.integrations.slack_blocks import (
    HEADER_LIMIT,
    MAX_BLOCKS,
    TEXT_LIMIT,
    Block,
    cut,
    escape_mrkdwn,
    escaped_within,
    mrkdwn_link,
    packed_sections,
)

# Incidents listed one per line; the rest are counted ("and N more").
MAX_LISTED = 100
TOP_ALERTNAMES = 10
TITLE_LIMIT = 80
STATES = ("triggered", "acknowledged", "resolved")
STATE_WORDS = {"triggered": "open", "acknowledged": "acknowledged", "resolved": "resolved"}


@dataclass(frozen=True)
class StormIncident:
    id: int
    title: str
    severity: str
    status: str
    alertname: str
    url: str


@dataclass(frozen=True)
class StormView:
    """A channel's storm: every incident it covers, and the ones to list first."""

    started_at: datetime
    incidents: Sequence[StormIncident]
    console_url: str
    # Listed before the others (the incidents this edit adds), newest first after them.
    first: Sequence[int] = field(default_factory=tuple)
    ended_at: datetime | None = None

    def listed(self) -> list[StormIncident]:
        by_id = {each.id: each for each in self.incidents}
        chosen = [by_id[i] for i in dict.fromkeys(self.first) if i in by_id][:MAX_LISTED]
        seen = {each.id for each in chosen}
        for each in sorted(self.incidents, key=lambda i: i.id, reverse=True):
            if len(chosen) >= MAX_LISTED:
                break
            if each.id not in seen:
                chosen.append(each)
        return chosen

    @property
    def open(self) -> int:
        return sum(1 for each in self.incidents if each.status != "resolved")


def _counts(view: StormView) -> list[Block]:
    states = Counter(each.status for each in view.incidents)
    severities = Counter(each.severity for each in view.incidents)
    names = Counter(each.alertname for each in view.incidents)
    by_state = " · ".join(f"{states[s]} {STATE_WORDS[s]}" for s in STATES if states[s])
    by_severity = " · ".join(f"{severities[s]} {s}" for s in sorted(severities))
    top = names.most_common(TOP_ALERTNAMES)
    by_name = "\n".join(f"{n} {escaped_within(name or '(no alertname)', 100)}" for name, n in top)
    if len(names) > TOP_ALERTNAMES:
        by_name += f"\n… {len(names) - TOP_ALERTNAMES} other alertnames"
    fields = [
        {"type": "mrkdwn", "text": f"*State*\n{by_state or '-'}"},
        {"type": "mrkdwn", "text": f"*Severity*\n{by_severity or '-'}"},
    ]
    return [
        {"type": "section", "fields": fields},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*Alertname*\n{by_name or '-'}"}},
    ]


def _line(each: StormIncident) -> str:
    title = escaped_within(each.title, TITLE_LIMIT)
    link = mrkdwn_link(each.url, f"#{each.id}") or f"#{each.id}"
    return f"{link} {each.severity} · {title} · {STATE_WORDS.get(each.status, each.status)}"


def render_storm(view: StormView) -> tuple[str, list[Block]]:
    """The storm message: its fallback ``text`` and blocks."""
    total = len(view.incidents)
    since = view.started_at.strftime("%H:%M:%S UTC")
    if view.ended_at is None:
        title = f":cyclone: Alert storm: {total} incident{'s' if total != 1 else ''} since {since}"
    else:
        until = view.ended_at.strftime("%H:%M:%S UTC")
        title = (f":white_check_mark: Alert storm over: {total} incident{'s' if total != 1 else ''}"
                 f", {since} to {until}")
    blocks: list[Block] = [
        {"type": "header", "text": {"type": "plain_text", "text": cut(title, HEADER_LIMIT),
                                    "emoji": True}},
        *_counts(view),
    ]
    listed = view.listed()
    room = MAX_BLOCKS - len(blocks) - 2
    sections, placed = packed_sections([_line(each) for each in listed], room)
    blocks.extend(sections)
    more = total - placed
    console = mrkdwn_link(view.console_url, "see the console") or "see the console"
    footer = f"and {more} more — {console}" if more > 0 else f"Every incident: {console}"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": footer}]})
    if view.ended_at is None:
        note = ("One message a channel while the storm lasts: no thread replies; "
                "each incident's detail is in the console.")
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": note}]})
    text = f"{title} ({view.open} open). " + "; ".join(
        f"#{each.id} {each.severity} {each.title}" for each in listed[:placed]
    )
    return escaped_within(text, TEXT_LIMIT), blocks


def render_storm_summary(view: StormView) -> tuple[str, list[Block]]:
    """The closing summary posted when a channel leaves storm mode."""
    total = len(view.incidents)
    ended = view.ended_at or view.started_at
    minutes = max(1, round((ended - view.started_at).total_seconds() / 60))
    severities = Counter(each.severity for each in view.incidents)
    by_severity = ", ".join(f"{severities[s]} {s}" for s in sorted(severities))
    summary = (
        f"Alert storm over: {total} incident{'s' if total != 1 else ''} in about "
        f"{minutes} min ({by_severity or 'none'}); {view.open} still open."
    )
    console = mrkdwn_link(view.console_url, "Open incidents in the console")
    blocks: list[Block] = [{"type": "section", "text": {"type": "mrkdwn",
                                                         "text": escape_mrkdwn(summary)}}]
    if console:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": console}]})
    return escaped_within(f":white_check_mark: {summary}", TEXT_LIMIT), blocks
