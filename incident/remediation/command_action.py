"""The ``command`` action: an argv list run without a shell, in a process group of its own.

Each argv element renders to exactly one argument, so a label value is never
split or read by a shell. The child does not inherit the worker's environment,
which holds the database URL and the Slack and PagerDuty secrets.
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from incident.remediation.context import (
    ActionOutcome,
    CapturedOutput,
    RemediationContext,
    shown_value,
)
from incident.rules.remediations import CommandActionSettings
from incident.rules.templates import (
    Placeholder,
    RenderError,
    TemplateValues,
    parse_template,
    render,
)

# What a program needs from the worker's environment to behave normally.
PASSED_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")
# Between SIGTERM and SIGKILL, for the group to clean up.
KILL_GRACE = 2.0
END_OF_OPTIONS = "--"
# Linux's MAX_ARG_STRLEN: the longest single argument or NAME=value, NUL included.
MAX_ARG_BYTES = 131072
# Spawn errors that pass once the machine has breath again; the rest come back.
_PASSING_SPAWN_ERRORS = frozenset({errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE})


@dataclass(frozen=True)
class PreparedCommand:
    argv: tuple[str, ...]
    # The child's whole environment.
    env: dict[str, str]
    # The rule's own `env:`, rendered: what describe() shows.
    rule_env: dict[str, str]
    cwd: str | None


def prepare_command(
    settings: CommandActionSettings,
    values: TemplateValues,
    *,
    worker_env: Mapping[str, str],
) -> PreparedCommand:
    """The argv and environment, rendered and checked; RenderError when it must not run."""
    argv: list[str] = []
    for index, template in enumerate(settings.argv):
        value = render(template, values)
        _refuse_option_injection(index, template, value, settings.argv[:index])
        argv.append(value)
    rule_env = {
        name: render(template, values, allow_env=True) for name, template in settings.env.items()
    }
    env = {name: worker_env[name] for name in PASSED_THROUGH if name in worker_env}
    env.update(_incident_variables(values))
    env.update(rule_env)
    for index, value in enumerate(argv):
        if "\0" in value:
            raise RenderError(f"argv[{index}] would contain a NUL byte")
        _refuse_oversized(f"argv[{index}]", len(value.encode()) + 1)
    for name, value in env.items():
        if "\0" in value:
            raise RenderError(f"environment variable {name} would contain a NUL byte")
        # Sizes only: a variable from `env:` may hold a secret.
        _refuse_oversized(f"environment variable {name}", len(f"{name}={value}".encode()) + 1)
    return PreparedCommand(tuple(argv), env, rule_env, settings.cwd)


def _refuse_oversized(what: str, size: int) -> None:
    # The kernel would refuse it with E2BIG; saying which one is kinder.
    if size > MAX_ARG_BYTES:
        raise RenderError(
            f"{what} would be {size} bytes, more than the {MAX_ARG_BYTES} the system "
            "allows one argument or environment variable"
        )


def _refuse_option_injection(
    index: int, template: str, value: str, earlier: tuple[str, ...]
) -> None:
    # `rm {labels.path}` with path="-rf" would read it as an option: a label
    # value may begin an argument only after "--" has ended the options.
    pieces = parse_template(template)
    if not pieces or not isinstance(pieces[0], Placeholder) or not value.startswith("-"):
        return
    if END_OF_OPTIONS in earlier:
        return
    raise RenderError(
        f"argv[{index}] {template} would be {shown_value(value)}, which the program would "
        f'read as an option; put "{END_OF_OPTIONS}" before it in argv if it is an operand'
    )


def _incident_variables(values: TemplateValues) -> dict[str, str]:
    incident = values.incident
    return {
        "INCIDENT_REMEDIATION": str(values.remediation.get("name", "")),
        "INCIDENT_KEY": str(incident.get("key", "")),
        "INCIDENT_ID": str(incident.get("id", "")),
        "INCIDENT_SEVERITY": str(incident.get("severity", "")),
        "INCIDENT_TITLE": str(incident.get("title", "")),
        "INCIDENT_URL": str(incident.get("url", "")),
        "INCIDENT_LABELS": json.dumps(dict(values.labels), sort_keys=True, ensure_ascii=False),
    }


def run_command(
    settings: CommandActionSettings, context: RemediationContext, timeout: float
) -> ActionOutcome:
    try:
        command = prepare_command(
            settings, context.template_values(env=os.environ), worker_env=os.environ
        )
    except RenderError as error:
        return ActionOutcome.refused(str(error))
    program = command.argv[0]
    try:
        process = subprocess.Popen(
            command.argv,
            env=command.env,
            cwd=command.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Its own process group, so a timeout can end whatever it started too.
            start_new_session=True,
        )
    except FileNotFoundError as error:
        if command.cwd is not None and error.filename == command.cwd:
            return ActionOutcome.refused(f"working directory {command.cwd} does not exist")
        return ActionOutcome.refused(
            f"{program}: no such program (PATH={command.env.get('PATH', os.defpath)})"
        )
    except PermissionError as error:
        return ActionOutcome.refused(f"{program}: cannot run it: {error.strerror}")
    except OSError as error:
        # It never ran, so this says nothing of what it would have fixed; it is
        # often the incident's own doing (E2BIG: its labels are too big).
        return ActionOutcome.refused(
            f"{program}: could not start: {error.strerror or error}",
            retryable=error.errno in _PASSING_SPAWN_ERRORS,
        )

    assert isinstance(process.stdout, io.BufferedReader)
    captured = CapturedOutput()
    reader = threading.Thread(target=_drain, args=(process.stdout, captured), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    try:
        process.wait(timeout=timeout)
        # A child it left behind may still hold the output open.
        reader.join(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    if reader.is_alive():
        exited_first = process.poll() is not None
        _end_process_group(process)
        reader.join(1.0)
        detail = (
            ": it exited, but a process it started kept its output open" if exited_first else ""
        )
        return ActionOutcome.failure(
            f"{program} timed out after {timeout:g}s{detail}", output=captured.text()
        )
    status = process.returncode
    if status == 0:
        return ActionOutcome.success(captured.text())
    if status < 0:
        return ActionOutcome.failure(
            f"{program} was killed by {_signal_name(-status)}", output=captured.text()
        )
    return ActionOutcome.failure(f"{program} exited with status {status}", output=captured.text())


def _drain(stream: io.BufferedReader, captured: CapturedOutput) -> None:
    try:
        while chunk := stream.read1(65536):
            captured.add(chunk)
    except (OSError, ValueError):
        pass
    finally:
        stream.close()


def _end_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the whole group, then SIGKILL to whatever is left after the grace period."""
    group = process.pid
    if not _signal_group(group, signal.SIGTERM):
        process.wait()
        return
    ends = time.monotonic() + KILL_GRACE
    while time.monotonic() < ends:
        process.poll()
        if process.returncode is not None and not _signal_group(group, 0):
            return
        time.sleep(0.05)
    _signal_group(group, signal.SIGKILL)
    process.wait()


def _signal_group(group: int, signum: int) -> bool:
    """False once no process is left in the group."""
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        # A member changed user (setuid); the rest of the group was signalled.
        return True
    return True


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def describe_command(settings: CommandActionSettings, values: TemplateValues) -> dict[str, Any]:
    try:
        command = prepare_command(settings, values, worker_env={})
    except RenderError as error:
        return {"error": str(error)}
    described: dict[str, Any] = {"argv": list(command.argv), "env": command.rule_env}
    if command.cwd is not None:
        described["cwd"] = command.cwd
    return described


__all__ = [
    "KILL_GRACE",
    "PASSED_THROUGH",
    "PreparedCommand",
    "describe_command",
    "prepare_command",
    "run_command",
]
