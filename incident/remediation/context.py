"""What an action is given (``RemediationContext``) and what it answers (``ActionOutcome``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from incident.rules.remediations import RemediationRule
from incident.rules.templates import TemplateValues

# Enough to see why a command failed; the rest would bloat every incident row.
OUTPUT_LIMIT = 4096


@dataclass(frozen=True)
class RemediationContext:
    """A read-only view of the incident, handed to actions; build it with ``create``."""

    remediation: str
    incident_id: int
    incident_key: str
    title: str
    severity: str
    status: str
    labels: Mapping[str, str]
    url: str
    attempt: int
    params: Mapping[str, Any]

    @classmethod
    def create(
        cls,
        rule: RemediationRule,
        *,
        incident_id: int,
        incident_key: str,
        title: str,
        severity: str,
        status: str,
        labels: Mapping[str, str],
        url: str,
        attempt: int = 1,
    ) -> RemediationContext:
        # Copies, frozen: a python action may keep a reference or try to edit
        # them, and neither may reach the engine's data or the next attempt.
        return cls(
            remediation=rule.name,
            incident_id=int(incident_id),
            incident_key=str(incident_key),
            title=str(title),
            severity=_plain(severity),
            status=_plain(status),
            labels=MappingProxyType({str(name): str(value) for name, value in labels.items()}),
            url=str(url),
            attempt=int(attempt),
            params=deep_freeze(dict(rule.with_.model_extra or {})),
        )

    def template_values(self, env: Mapping[str, str] | None = None) -> TemplateValues:
        return TemplateValues(
            labels=self.labels,
            incident={
                "key": self.incident_key,
                "id": self.incident_id,
                "severity": self.severity,
                "title": self.title,
                "url": self.url,
            },
            remediation={"name": self.remediation},
            env=env,
        )


def _plain(value: Any) -> str:
    # An enum member becomes its value, whichever kind of enum it is.
    return str(getattr(value, "value", value))


def deep_freeze(value: Any) -> Any:
    """Mappings become read-only proxies of copies, lists and sets become tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({key: deep_freeze(item) for key, item in value.items()})
    if isinstance(value, list | tuple | set | frozenset):
        return tuple(deep_freeze(item) for item in value)
    return value


@dataclass(frozen=True)
class ActionOutcome:
    """How one attempt went. Actions return one; they never raise for a failed action."""

    succeeded: bool
    output: str = ""
    # One line, set when not succeeded.
    error: str | None = None
    # False: trying again cannot help (a bad rendering, a 4xx, a missing program).
    retryable: bool = True
    # False: the failure was the request's, not the target's (refused before
    # sending, a program that could not start, a 4xx answer), so it says nothing
    # of the target's health and its circuit breaker must not count it. Label
    # values shape requests: junk alerts must not open a breaker real ones need.
    reached_target: bool = True

    @classmethod
    def success(cls, output: str = "") -> ActionOutcome:
        return cls(succeeded=True, output=output)

    @classmethod
    def failure(cls, error: str, *, output: str = "", retryable: bool = True) -> ActionOutcome:
        """The target was tried and failed."""
        return cls(succeeded=False, output=output, error=one_line(error), retryable=retryable)

    @classmethod
    def refused(cls, error: str, *, output: str = "", retryable: bool = False) -> ActionOutcome:
        """A failure of this request, not of the target; by default refused again if retried."""
        return cls(
            succeeded=False,
            output=output,
            error=one_line(error),
            retryable=retryable,
            reached_target=False,
        )


def one_line(text: str, limit: int = 500) -> str:
    """Whitespace runs, newlines included, become one space; long text is cut."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def shown_value(value: str, limit: int = 60) -> str:
    """A value for an error message: quoted, escaped, and short even if it is 100 KB."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value)} characters)"


class CapturedOutput:
    """Keeps the first and the last ``limit`` bytes of a stream of any length."""

    def __init__(self, limit: int = OUTPUT_LIMIT) -> None:
        self.limit = limit
        self.total = 0
        self._head = bytearray()
        self._tail = bytearray()

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.limit - len(self._head)
        if room > 0:
            self._head += chunk[:room]
        self._tail += chunk
        if len(self._tail) > self.limit:
            del self._tail[: len(self._tail) - self.limit]

    def text(self) -> str:
        """At most ``limit`` bytes of UTF-8: head and tail around a ``… N bytes trimmed …`` line."""
        if self.total <= self.limit:
            return self._head.decode("utf-8", errors="replace")
        # Sized for the largest count, so the result never exceeds the limit.
        budget = self.limit - len(f"\n… {self.total} bytes trimmed …\n".encode())
        head = _cut_before_char(bytes(self._head), budget // 2)
        tail = _cut_after_char(bytes(self._tail), budget - budget // 2)
        trimmed = self.total - len(head) - len(tail)
        marker = f"\n… {trimmed} bytes trimmed …\n"
        return (
            head.decode("utf-8", errors="replace") + marker + tail.decode("utf-8", errors="replace")
        )


def trim_output(data: bytes | str, limit: int = OUTPUT_LIMIT) -> str:
    captured = CapturedOutput(limit)
    captured.add(data.encode() if isinstance(data, str) else data)
    return captured.text()


def _cut_before_char(data: bytes, size: int) -> bytes:
    # Not in the middle of a UTF-8 sequence: continuation bytes are 0b10xxxxxx.
    end = min(size, len(data))
    while 0 < end < len(data) and data[end] & 0xC0 == 0x80:
        end -= 1
    return data[:end]


def _cut_after_char(data: bytes, size: int) -> bytes:
    start = max(0, len(data) - size)
    while start < len(data) and data[start] & 0xC0 == 0x80:
        start += 1
    return data[start:]


__all__ = [
    "OUTPUT_LIMIT",
    "ActionOutcome",
    "CapturedOutput",
    "RemediationContext",
    "deep_freeze",
    "one_line",
    "shown_value",
    "trim_output",
]
