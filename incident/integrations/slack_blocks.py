"""Block Kit rendering for Slack: pure functions from an ``IncidentView`` to a
message, kept within Slack's limits.

Label and annotation values come from whoever wrote the alerting rules, so all
of it is escaped for mrkdwn (``&``, ``<``, ``>``): a label cannot ping
``<!channel>`` or smuggle in a link. Slack rejects a whole message
(``invalid_blocks``) when one text is too long, so every text is cut to fit
rather than trusted to fit.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from incident.integrations.base import NOTIFICATION_EVENT_TYPE, IncidentView

# Slack's documented limits (https://api.slack.com/reference/block-kit/blocks).
HEADER_LIMIT = 150
SECTION_LIMIT = 3000
FIELD_LIMIT = 2000
MAX_FIELDS = 10
MAX_BLOCKS = 50
# `text` may be 40,000 characters, but Slack truncates what it shows after 4,000.
TEXT_LIMIT = 3000

# The labels an on-call engineer looks at first, in this order.
KEY_LABELS = ("alertname", "service", "instance", "env", "severity")
MAX_SOURCE_LINKS = 3

STATUS_EMOJI = {
    "triggered": ":red_circle:",
    "acknowledged": ":large_yellow_circle:",
    "resolved": ":large_green_circle:",
}

Block = dict[str, Any]

# The parent's controls (with INCIDENT_SLACK_SIGNING_SECRET): each action id,
# and the Silence menu's choices. A button's value is the incident id; a
# menu option's is "{incident id}:{duration}".
ACKNOWLEDGE_ACTION = "incident.acknowledge"
RESOLVE_ACTION = "incident.resolve"
SILENCE_ACTION = "incident.silence"
SILENCE_CHOICES = ("1h", "4h", "24h")
ACTIONS_BLOCK = "incident.actions"
# A Slack user (or Enterprise Grid user) id, safe inside a <@…> mention.
_SLACK_USER_ID = re.compile(r"[UW][A-Z0-9]{2,40}")
NAME_LIMIT = 200


_MRKDWN_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def escape_mrkdwn(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def cut(text: str, limit: int) -> str:
    """``text`` shortened to ``limit`` characters, marked with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def escaped_within(text: str, limit: int) -> str:
    """``text`` escaped and then fitted to ``limit``, never splitting an entity."""
    escaped = escape_mrkdwn(text)
    if len(escaped) <= limit:
        return escaped
    pieces: list[str] = []
    size = 0
    for char in text:
        piece = _MRKDWN_ESCAPES.get(char, char)
        if size + len(piece) > limit - 1:
            break
        pieces.append(piece)
        size += len(piece)
    return "".join(pieces) + "…"


def mrkdwn_link(url: str, label: str) -> str | None:
    """``<url|label>``, or None for anything but an http(s) URL."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    # `|` and `>` end the link early; spaces break it; `&` and `<` are entities in mrkdwn.
    safe_url = (
        url.strip()
        .replace(" ", "%20")
        .replace("|", "%7C")
        .replace("<", "%3C")
        .replace(">", "%3E")
        .replace("&", "&amp;")
    )
    return f"<{safe_url}|{escape_mrkdwn(label)}>"


def notification_metadata(ledger_id: int, **extra: Any) -> dict[str, Any]:
    return {
        "event_type": NOTIFICATION_EVENT_TYPE,
        "event_payload": {
            "ledger_id": ledger_id,
            **{key: value for key, value in extra.items() if value not in ("", [], ())},
        },
    }


def actor_phrase(actor: dict[str, str] | None) -> str:
    """Who did something, to follow a verb: "by <@U024BE7LH>", "through the API"…

    A Slack user is mentioned by id (Slack shows the current display name);
    every other name is escaped, since it comes from outside.
    """
    actor = actor or {}
    by = actor.get("by")
    user = actor.get("user") or ""
    name = escaped_within(actor.get("name") or user, NAME_LIMIT)
    match by:
        case "slack" if _SLACK_USER_ID.fullmatch(user):
            return f"by <@{user}>"
        case "slack" | "web":
            return f"by {name}" if name else ""
        case "pagerduty":
            return f"in PagerDuty by {name}" if name else "in PagerDuty"
        case "api":
            return "through the API"
        case "alertmanager":
            return "by Alertmanager"
        case "stale":
            return "as stale"
        case "maintenance":
            return "by a maintenance window"
        case "system":
            return "automatically"
    return ""


def render_parent(incident: IncidentView, *, interactive: bool = False) -> tuple[str, list[Block]]:
    """The parent message: its plain fallback ``text`` and its blocks.

    ``interactive``: an open incident carries Acknowledge and Resolve buttons
    and a Silence menu (Acknowledge only while nobody has acknowledged it).
    """
    emoji = STATUS_EMOJI.get(incident.status, ":grey_question:")
    blocks: list[Block] = [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": cut(f"{emoji} {incident.severity} · {incident.title}", HEADER_LIMIT),
                "emoji": True,
            },
        },
        {"type": "section", "fields": _fields(incident)},
    ]
    who = _who(incident)
    if who:
        blocks.append(_section(who))
    details = _details(incident)
    if details:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": details}})
    links = _links(incident)
    if links:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": links}})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _context(incident)}]})
    if interactive and incident.status != "resolved":
        blocks.append(_controls(incident))

    fallback = f"{emoji} [{incident.severity}] {incident.title}"
    if incident.summary:
        fallback += f" — {incident.summary}"
    fallback += f" ({_status_text(incident)})"
    return escaped_within(fallback, TEXT_LIMIT), blocks[:MAX_BLOCKS]


def render_reply(text: str) -> str:
    return escaped_within(text, TEXT_LIMIT)


def render_digest(lines: list[str]) -> tuple[str, list[Block]]:
    """Lines packed into as few sections as fit; the rest counted, not dropped silently."""
    lines = [line for line in lines if line.strip()]  # Slack rejects an empty section
    title = f"Incident digest: {len(lines)} item{'s' if len(lines) != 1 else ''}"
    max_sections = MAX_BLOCKS - 2  # room for the header and the "…and N more" line
    sections, placed = packed_sections(
        [escaped_within(line, SECTION_LIMIT) for line in lines], max_sections
    )

    blocks: list[Block] = [{"type": "header", "text": {"type": "plain_text", "text": title}}]
    blocks.extend(sections)
    if placed < len(lines):
        more = f"…and {len(lines) - placed} more"
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": more}]})
    return escaped_within(title + "\n" + "\n".join(lines), TEXT_LIMIT), blocks


def _who(incident: IncidentView) -> str:
    lines = []
    if incident.acknowledged_by:
        lines.append(f"Acknowledged {actor_phrase(incident.acknowledged_by)}".strip())
    if incident.resolved_by and incident.status == "resolved":
        lines.append(f"Resolved {actor_phrase(incident.resolved_by)}".strip())
    return "\n".join(lines)


def _button(text: str, action_id: str, value: str, style: str | None = None) -> Block:
    button: Block = {
        "type": "button",
        "text": {"type": "plain_text", "text": text},
        "action_id": action_id,
        "value": value,
    }
    if style:
        button["style"] = style
    return button


def _controls(incident: IncidentView) -> Block:
    value = str(incident.id)
    elements: list[Block] = []
    if incident.status == "triggered":
        elements.append(_button("Acknowledge", ACKNOWLEDGE_ACTION, value, "primary"))
    elements.append(_button("Resolve", RESOLVE_ACTION, value))
    elements.append({
        "type": "static_select",
        "action_id": SILENCE_ACTION,
        "placeholder": {"type": "plain_text", "text": "Silence"},
        "options": [
            {"text": {"type": "plain_text", "text": choice}, "value": f"{value}:{choice}"}
            for choice in SILENCE_CHOICES
        ],
    })
    return {"type": "actions", "block_id": ACTIONS_BLOCK, "elements": elements}


def packed_sections(lines: list[str], room: int) -> tuple[list[Block], int]:
    """Mrkdwn lines (already escaped) packed into at most ``room`` sections, each
    within Slack's limit; returns them and how many lines fit."""
    sections: list[str] = []
    chunk = ""
    placed = 0
    for line in lines:
        candidate = f"{chunk}\n{line}" if chunk else line
        if len(candidate) > SECTION_LIMIT:
            if len(sections) + 1 >= room:
                break
            sections.append(chunk)
            candidate = line
        chunk = candidate
        placed += 1
    if chunk:
        sections.append(chunk)
    return [_section(text) for text in sections], placed


def _section(text: str) -> Block:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _status_text(incident: IncidentView) -> str:
    status = incident.status.capitalize()
    return f"{status}, flapping" if incident.flapping else status


def _fields(incident: IncidentView) -> list[Block]:
    fields = [
        {"type": "mrkdwn", "text": f"*Status*\n{escape_mrkdwn(_status_text(incident))}"},
        {"type": "mrkdwn", "text": f"*Severity*\n{escape_mrkdwn(incident.severity)}"},
    ]
    for name in KEY_LABELS:
        value = incident.labels.get(name)
        if value and len(fields) < MAX_FIELDS:
            text = f"*{name}*\n{escaped_within(value, FIELD_LIMIT - len(name) - 3)}"
            fields.append({"type": "mrkdwn", "text": text})
    return fields


def _details(incident: IncidentView) -> str:
    # Slack refuses a section whose text is blank, and with it the whole message.
    parts: list[str] = []
    summary = (incident.summary or "").strip()
    if summary:
        parts.append(f"*{escaped_within(summary, SECTION_LIMIT // 3)}*")
    description = (incident.annotations.get("description") or "").strip()
    if description and description != summary:
        parts.append(escaped_within(description, SECTION_LIMIT - 2 - sum(map(len, parts)) - 1))
    return "\n".join(parts)


def _links(incident: IncidentView) -> str:
    candidates: list[tuple[str, str]] = []
    runbook = incident.annotations.get("runbook_url")
    if runbook:
        candidates.append((runbook, "Runbook"))
    sources = [a.generator_url for a in incident.alerts if a.generator_url]
    for number, url in enumerate(dict.fromkeys(sources).keys(), start=1):
        if number > MAX_SOURCE_LINKS:
            break
        candidates.append((url, "Source" if len(sources) == 1 else f"Source {number}"))
    silence = incident.silence_url()
    if silence:
        candidates.append((silence, "Silence"))
    candidates.append((incident.incident_url, f"Incident #{incident.id}"))

    text = ""
    for url, label in candidates:
        link = mrkdwn_link(url, label)
        # A cut URL is a broken link: leave out a link that does not fit whole.
        if link and len(text) + len(link) + 3 <= SECTION_LIMIT:
            text = f"{text} · {link}" if text else link
    return text


def _context(incident: IncidentView) -> str:
    firing = len(incident.firing_alerts)
    opened = incident.created_at.strftime("%Y-%m-%d %H:%M UTC")
    return escape_mrkdwn(
        f"Incident #{incident.id} · {firing} of {len(incident.alerts)} alerts firing · opened {opened}"
    )
