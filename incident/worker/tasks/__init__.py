"""The Celery tasks: thin, named doors onto the domain services.

Each pool process builds its context on its first task (after the fork, so
no connection is shared with the parent) and keeps it for its life.
"""

from __future__ import annotations

from incident.config import get_settings
from incident.context import Context
from incident.rules import load_rules, require_routing_keys
from incident.worker.app import publish


class _Process:
    context: Context | None = None


_process = _Process()


def context() -> Context:
    if _process.context is None:
        settings = get_settings()
        rules = load_rules(settings.rules_file)
        # Also checked when `incident worker` starts; `celery worker` starts here.
        require_routing_keys(rules.routes)
        _process.context = Context(settings, rules, publish)
    return _process.context


def reset_context() -> None:
    """Forget the context (tests that change settings or rules in-process)."""
    _process.context = None
