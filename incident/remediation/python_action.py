"""The ``python`` action: a function registered under the ``incident.remediations`` entry points.

A plugin package declares, in its pyproject.toml::

    [project.entry-points."incident.remediations"]
    flush_cache = "mycompany.remediations:flush_cache"

and the function is called with the ``RemediationContext``. Returning is
success (a returned string is kept as output); raising is a retryable failure.
"""

from __future__ import annotations

import json
import traceback
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from incident.remediation.context import ActionOutcome, RemediationContext, trim_output
from incident.remediation.time_limit import AttemptTimedOut, time_limit
from incident.rules.remediations import PythonActionSettings

ENTRY_POINT_GROUP = "incident.remediations"


def find_entry_point(name: str) -> EntryPoint | None:
    """The installed entry point called ``name`` in the group, if any."""
    return next(iter(entry_points(group=ENTRY_POINT_GROUP, name=name)), None)


def missing_entry_point_message(name: str) -> str:
    return f"no entry point {name!r} is installed in group {ENTRY_POINT_GROUP!r}"


def run_python(
    settings: PythonActionSettings, context: RemediationContext, timeout: float
) -> ActionOutcome:
    name = settings.function
    entry_point = find_entry_point(name)
    if entry_point is None:
        return ActionOutcome.refused(missing_entry_point_message(name))
    try:
        with time_limit(timeout):
            try:
                function = entry_point.load()
            except Exception as error:
                # Importing the same broken module again will fail the same way.
                return ActionOutcome.refused(
                    f"entry point {name!r} ({entry_point.value}) cannot be loaded: "
                    f"{type(error).__name__}: {error}",
                    output=_traceback_of(error),
                )
            if not callable(function):
                return ActionOutcome.refused(
                    f"entry point {name!r} ({entry_point.value}) is not a function"
                )
            try:
                result = function(context)
            except (Exception, SystemExit) as error:
                return ActionOutcome.failure(
                    f"{name} raised {type(error).__name__}: {error}",
                    output=_traceback_of(error),
                )
    except AttemptTimedOut:
        return ActionOutcome.failure(f"{name} timed out after {timeout:g}s")
    return ActionOutcome.success(trim_output(result) if isinstance(result, str) else "")


def _traceback_of(error: BaseException) -> str:
    return trim_output("".join(traceback.format_exception(error)))


def describe_python(settings: PythonActionSettings) -> dict[str, Any]:
    entry_point = find_entry_point(settings.function)
    return {
        "function": settings.function,
        # Through JSON so that a YAML date among them prints as text.
        "params": json.loads(json.dumps(settings.model_extra or {}, default=str)),
        "entry_point": entry_point.value if entry_point is not None else None,
    }


__all__ = [
    "ENTRY_POINT_GROUP",
    "describe_python",
    "find_entry_point",
    "missing_entry_point_message",
    "run_python",
]
