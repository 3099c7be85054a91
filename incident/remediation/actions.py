"""Running one attempt of a remediation, and showing what it would run.

The engine calls ``perform`` once per attempt and decides from the
``ActionOutcome`` whether to retry and what the circuit breaker counts; it
sets Celery's time limits above ``attempt_timeout``. ``describe`` serves
``incident rules test``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from incident import tracing
from incident.remediation.command_action import describe_command, run_command
from incident.remediation.context import ActionOutcome, RemediationContext
from incident.remediation.http_action import describe_http, run_http
from incident.remediation.python_action import describe_python, run_python
from incident.rules.remediations import (
    CommandRemediation,
    HttpRemediation,
    PythonRemediation,
    RemediationRule,
)
from incident.rules.templates import TemplateValues

DEFAULT_TIMEOUT = 30.0


def attempt_timeout(rule: RemediationRule) -> float:
    """Seconds one attempt may take: the rule's ``with.timeout``, else DEFAULT_TIMEOUT."""
    timeout = rule.with_.timeout
    return timeout.total_seconds() if timeout is not None else DEFAULT_TIMEOUT


def perform(
    rule: RemediationRule, context: RemediationContext, *, timeout: float | None = None
) -> ActionOutcome:
    """Run one attempt. A failed action is an outcome, never an exception.

    ``timeout`` overrides the rule's own, in seconds.
    """
    seconds = timeout if timeout is not None else attempt_timeout(rule)
    with tracing.client_span(
        f"remediation {rule.name}", **{"incident.remediation": rule.name,
                                       "incident.remediation.action": str(rule.action)}
    ):
        return _perform(rule, context, seconds)


def _perform(rule: RemediationRule, context: RemediationContext, seconds: float) -> ActionOutcome:
    if isinstance(rule, HttpRemediation):
        return run_http(rule.with_, context, seconds)
    if isinstance(rule, CommandRemediation):
        return run_command(rule.with_, context, seconds)
    if isinstance(rule, PythonRemediation):
        return run_python(rule.with_, context, seconds)
    return ActionOutcome.refused(
        f"remediation {rule.name!r} has no runnable action {rule.action!r}"
    )


def describe(
    rule: RemediationRule,
    labels: Mapping[str, str],
    *,
    incident: Mapping[str, str | int] | None = None,
) -> dict[str, Any]:
    """What one attempt would run for an incident with ``labels``, rendered.

    Environment values are shown as ``<from $NAME>``, never read. Incident
    fields missing from ``incident`` (there is no incident yet when testing a
    payload) stay as their placeholders.
    """
    values = TemplateValues(
        labels=labels,
        incident=dict(incident or {}),
        remediation={"name": rule.name},
        env=None,
    )
    if isinstance(rule, HttpRemediation):
        return describe_http(rule.with_, values)
    if isinstance(rule, CommandRemediation):
        return describe_command(rule.with_, values)
    if isinstance(rule, PythonRemediation):
        return describe_python(rule.with_)
    return {"error": f"no runnable action {rule.action!r}"}


__all__ = [
    "DEFAULT_TIMEOUT",
    "ActionOutcome",
    "RemediationContext",
    "attempt_timeout",
    "describe",
    "perform",
]
