"""``incident rules check`` and ``incident rules test``, minus the argument parsing.

Both return the process exit code and write to the streams they are given,
so the CLI stays a thin door and tests need no subprocess.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any, TextIO

import yaml
from pydantic import ValidationError

from incident.alerts.schemas import WebhookPayload
from incident.alerts.title import incident_summary, incident_title
from incident.remediation.actions import describe
from incident.remediation.python_action import find_entry_point, missing_entry_point_message
from incident.rules.durations import format_duration
from incident.rules.escalation import EscalationPolicy
from incident.rules.loader import RulesError, format_location, load_rules
from incident.rules.routes import unset_routing_keys
from incident.rules.remediations import (
    CommandRemediation,
    HttpRemediation,
    PythonRemediation,
    RemediationRule,
)
from incident.rules.schemas import Rules
from incident.rules.severity import Severity

BUILT_IN = "built-in defaults"
STDIN = "-"


class PayloadError(ValueError):
    """The payload file cannot be read or is not an Alertmanager v4 webhook payload."""


def check(path: Path | None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Validate a rules file: 0 with a one-line summary, or 1 with the errors and their lines."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        rules = load_rules(path)
    except RulesError as error:
        print(error, file=err)
        return 1
    # Not part of validation: every process loads the rules, and one without
    # the plugin installed (the receiver) must still start. The workers must have it.
    missing = _missing_entry_points(rules, path)
    if missing:
        print("\n".join(missing), file=err)
        return 1
    print(
        f"OK: {path if path is not None else BUILT_IN}: "
        f"{len(rules.severity.rules)} severity rules, {len(rules.remediations)} remediations, "
        f"{len(rules.routes)} routes",
        file=out,
    )
    # The api and workers refuse to start without them; here it is only a warning,
    # since the file may be checked where the keys do not live.
    for name in unset_routing_keys(rules.routes):
        print(f"warning: routing_key_env {name} is not set in this environment", file=err)
    return 0


def _missing_entry_points(rules: Rules, path: Path | None) -> list[str]:
    problems = []
    for index, rule in enumerate(rules.remediations):
        if isinstance(rule, PythonRemediation) and find_entry_point(rule.with_.function) is None:
            location = ("remediations", index, "with", "function")
            problems.append(
                f"{path}:{_line_of(path, location)}: {format_location(location)}: "
                f"{missing_entry_point_message(rule.with_.function)}"
            )
    return problems


def _line_of(path: Path | None, location: tuple[str | int, ...]) -> int | str:
    """The line of ``location`` in a rules file that has already loaded without error."""
    if path is None:
        return "?"
    node: yaml.Node | None = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    line = 1
    for segment in location:
        if isinstance(node, yaml.MappingNode):
            # The last of equal keys wins, as when the file was loaded.
            node = next(
                (
                    value
                    for key, value in reversed(node.value)
                    if isinstance(key, yaml.ScalarNode) and key.value == segment
                ),
                None,
            )
        elif isinstance(node, yaml.SequenceNode) and isinstance(segment, int):
            node = node.value[segment] if segment < len(node.value) else None
        else:
            node = None
        if node is None:
            break
        line = node.start_mark.line + 1
    return line


def explain(
    rules_path: Path | None,
    payload_path: Path | str,
    out: TextIO | None = None,
    err: TextIO | None = None,
    *,
    as_json: bool = False,
) -> int:
    """Show what one Alertmanager payload would get, like ``amtool config routes test``.

    ``payload_path`` may be ``-`` for standard input.
    """
    out, err = out or sys.stdout, err or sys.stderr
    try:
        rules = load_rules(rules_path)
        payload = read_payload(payload_path)
    except (RulesError, PayloadError) as error:
        print(error, file=err)
        return 1
    verdict = assess(rules, payload)
    if as_json:
        print(json.dumps(verdict, indent=2), file=out)
    else:
        print(_as_text(verdict), file=out)
    return 0


def read_payload(payload_path: Path | str) -> WebhookPayload:
    name = str(payload_path)
    try:
        if name == STDIN:
            text = sys.stdin.read()
        else:
            text = Path(payload_path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PayloadError(f"{name}: no such payload file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise PayloadError(f"{name}: cannot read: {error}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise PayloadError(
            f"{name}:{error.lineno}:{error.colno}: invalid JSON: {error.msg}"
        ) from None
    try:
        return WebhookPayload.model_validate(document)
    except ValidationError as error:
        problems = "\n".join(
            f"  {format_location(tuple(detail['loc']))}: {detail['msg']}{_given(detail)}"
            for detail in error.errors(include_url=False)
        )
        raise PayloadError(
            f"{name}: not an Alertmanager webhook payload (version 4):\n{problems}"
        ) from None


def _given(detail: Any) -> str:
    value = detail.get("input")
    if detail["type"] == "missing" or not isinstance(value, str | int | float | bool):
        return ""
    return f", got {value!r}"


def assess(rules: Rules, payload: WebhookPayload) -> dict[str, Any]:
    """The title, summary, per-alert severities and what the incident would get, as plain data.

    Title, summary and severity come from the code the pipeline stores them
    with, so the prediction cannot drift from what an incident gets.
    """
    alerts = [
        {
            "fingerprint": alert.fingerprint,
            "status": alert.status,
            "severity": rules.classify(alert.labels).value,
            "labels": dict(sorted(alert.labels.items())),
        }
        for alert in payload.alerts
    ]
    # The pipeline opens nothing for a notification with no firing alert.
    severity = (
        rules.incident_severity(payload) if any(alert.firing for alert in payload.alerts) else None
    )
    title = incident_title(payload)
    # Remediations run per incident, so they are matched on the group's common
    # labels, the labels the incident carries.
    remediations = (
        [
            _remediation_data(rule, payload.common_labels, title=title, severity=severity)
            for rule in rules.matching_remediations(payload.common_labels)
        ]
        if severity is not None
        else []
    )
    return {
        "title": title,
        "summary": incident_summary(payload),
        "severity": severity.value if severity is not None else None,
        "alerts": alerts,
        "remediations": remediations,
        "escalation": (
            _escalation_data(severity, rules.escalation_for(severity))
            if severity is not None
            else None
        ),
        # Chosen from the incident's labels, the group's common labels, as the pipeline does.
        "route": (
            rules.destinations_for(payload.common_labels).as_record()
            if severity is not None
            else None
        ),
    }


def _remediation_data(
    rule: RemediationRule, labels: dict[str, str], *, title: str, severity: Severity
) -> dict[str, Any]:
    return {
        "name": rule.name,
        "action": rule.action,
        "target": _action_target(rule),
        "on_failure": rule.on_failure,
        "attempts": rule.retry.attempts,
        "run_on_reopen": rule.run_on_reopen,
        # The incident's key, id and URL do not exist yet: they stay placeholders.
        "request": describe(rule, labels, incident={"title": title, "severity": severity.value}),
    }


def _action_target(rule: RemediationRule) -> str:
    if isinstance(rule, HttpRemediation):
        return f"{rule.with_.method} {rule.with_.url}"
    if isinstance(rule, CommandRemediation):
        return shlex.join(rule.with_.argv)
    if isinstance(rule, PythonRemediation):
        return rule.with_.function
    return ""


def _escalation_data(severity: Severity, policy: EscalationPolicy) -> dict[str, Any]:
    return {
        "severity": severity.value,
        "pagerduty": policy.pagerduty,
        "slack": policy.slack_enabled,
        "slack_channel": policy.slack_channel,
        "email": policy.email,
        "ack_timeout": _duration_text(policy.ack_timeout),
        "repeat": policy.repeat,
        "escalate_after": _duration_text(policy.escalate_after),
        "escalate_to": policy.escalate_to.value if policy.escalate_to else None,
    }


def _duration_text(duration: Any) -> str | None:
    return format_duration(duration) if duration is not None else None


def _as_text(verdict: dict[str, Any]) -> str:
    lines = [f"Group: {verdict['title']}"]
    if verdict["summary"]:
        lines.append(f"Summary: {verdict['summary']}")
    lines.append(f"Alerts ({len(verdict['alerts'])}):")
    for alert in verdict["alerts"]:
        labels = ", ".join(f'{name}="{value}"' for name, value in alert["labels"].items())
        lines.append(
            f"  {alert['fingerprint']}  {alert['status']:<8}  {alert['severity']}  {{{labels}}}"
        )
    severity = verdict["severity"]
    if severity is None:
        lines += [
            "Incident severity: none: no alert is firing, so no incident opens",
            "Remediations: none",
            "Escalation: none",
        ]
        return "\n".join(lines)

    firing = sum(alert["status"] == "firing" for alert in verdict["alerts"])
    lines.append(f"Incident severity: {severity} (worst of {firing} firing)")
    if verdict["remediations"]:
        lines.append("Remediations (matched on the group's common labels):")
        for each in verdict["remediations"]:
            lines.append(
                f"  {each['name']}  {each['action']}  {each['target']}  "
                f"(attempts {each['attempts']}, on failure: {each['on_failure']})"
            )
            lines += [f"    {line}" for line in _request_lines(each["request"])]
    else:
        lines.append("Remediations: none match the group's common labels")
    lines.append(f"Escalation for {severity}:")
    lines += [f"  {line}" for line in _escalation_lines(verdict["escalation"])]
    lines += _route_lines(verdict["route"])
    return "\n".join(lines)


def _route_lines(route: dict[str, Any]) -> list[str]:
    matched = ", ".join(route["routes"]) or "none matched: the defaults"
    lines = [f"Route: {matched}"]
    for channel, default in (
        ("slack", "default channel"),
        ("pagerduty", "default routing key (INCIDENT_PAGERDUTY_ROUTING_KEY)"),
        ("email", "default recipients (INCIDENT_EMAIL_TO)"),
    ):
        shown = ", ".join(route[channel]) or default
        if channel == "pagerduty" and route[channel]:
            shown = ", ".join(f"key from ${name}" for name in route[channel])
        lines.append(f"  {channel}: {shown}")
    lines += [f"  problem: {problem}" for problem in route.get("problems", ())]
    return lines


def _request_lines(request: dict[str, Any]) -> list[str]:
    if "error" in request:
        return [f"would not run: {request['error']}"]
    if "url" in request:
        lines = [f"{request['method']} {request['url']}"]
        lines += [f"{name}: {value}" for name, value in request["headers"].items()]
        if request["body"] is not None:
            lines.append(f"body: {json.dumps(request['body'], ensure_ascii=False)}")
        return lines
    if "argv" in request:
        lines = [f"argv: {shlex.join(request['argv'])}"]
        lines += [f"env: {name}={value}" for name, value in request["env"].items()]
        if "cwd" in request:
            lines.append(f"cwd: {request['cwd']}")
        return lines
    target = request["entry_point"] or "NOT INSTALLED"
    lines = [f"function: {request['function']} ({target})"]
    if request["params"]:
        lines.append(f"params: {json.dumps(request['params'], ensure_ascii=False)}")
    return lines


def _escalation_lines(escalation: dict[str, Any]) -> list[str]:
    slack = "off"
    if escalation["slack"]:
        slack = escalation["slack_channel"] or "default channel"
    lines = [f"pagerduty: {escalation['pagerduty'] or 'off'}", f"slack: {slack}",
             f"email: {'on' if escalation['email'] else 'off'}"]
    if escalation["ack_timeout"]:
        lines.append(f"ack_timeout: {escalation['ack_timeout']}, repeat: {escalation['repeat']}")
    if escalation["escalate_to"]:
        lines.append(
            f"escalate_after: {escalation['escalate_after']}, "
            f"escalate_to: {escalation['escalate_to']}"
        )
    return lines
