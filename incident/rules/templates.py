"""Placeholders in remediation settings: ``{labels.service}``, ``{incident.key}``, ``{env.TOKEN}``.

A tiny renderer of its own rather than ``str.format``, whose ``{0.__class__}``
attribute and index lookups would let a rules file reach into Python objects.
Only the names below exist; ``{{`` and ``}}`` are literal braces. Templates
are checked when the rules file is loaded (``check_template``), so at run time
the only thing that can go wrong is a value that is not there: a label the
incident lacks, or an environment variable the worker lacks.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

LABELS = "labels"
INCIDENT = "incident"
REMEDIATION = "remediation"
ENV = "env"

INCIDENT_FIELDS = ("key", "id", "severity", "title", "url")
REMEDIATION_FIELDS = ("name",)

# Prometheus label names, and the names a shell would accept for a variable.
LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# `{{` and `}}` first, so `{{labels.a}}` reads as literal braces around literal text.
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")

_EXAMPLES = "{labels.NAME}, {incident.key}, {incident.id}, {incident.severity}, {incident.title}, {incident.url}, {remediation.name}"


class TemplateError(ValueError):
    """A template that can never render: unknown name, unbalanced brace, misplaced ``{env.…}``."""


class RenderError(ValueError):
    """A template that cannot render for this incident; retrying will not help."""


class MissingLabel(RenderError):
    def __init__(self, name: str) -> None:
        super().__init__(f"the incident has no label {name!r} (used as {{labels.{name}}})")
        self.name = name


class MissingEnvironmentVariable(RenderError):
    def __init__(self, name: str) -> None:
        super().__init__(
            f"environment variable {name} is not set in the worker (used as {{env.{name}}})"
        )
        self.name = name


@dataclass(frozen=True)
class Placeholder:
    namespace: str
    name: str

    @property
    def text(self) -> str:
        return f"{{{self.namespace}.{self.name}}}"


Piece = str | Placeholder


class Shown(str):
    """A stand-in shown instead of a value (``<from $TOKEN>``), never escaped."""


@functools.lru_cache(maxsize=1024)
def parse_template(text: str, *, allow_env: bool = False) -> tuple[Piece, ...]:
    """The literal text and placeholders of ``text``, in order; TemplateError if invalid."""
    pieces: list[Piece] = []
    literal: list[str] = []
    position = 0
    for match in _TOKEN.finditer(text):
        literal.append(text[position : match.start()])
        position = match.end()
        token = match.group()
        if token in ("{{", "}}"):
            literal.append(token[0])
            continue
        if token in ("{", "}"):
            raise TemplateError(
                f"unbalanced {token!r} at position {match.start()} in {text!r}: "
                f"write {token * 2!r} for a literal brace"
            )
        placeholder = _placeholder(match.group(1), text, allow_env=allow_env)
        if "".join(literal):
            pieces.append("".join(literal))
        literal = []
        pieces.append(placeholder)
    literal.append(text[position:])
    if "".join(literal):
        pieces.append("".join(literal))
    return tuple(pieces)


def _placeholder(inner: str, text: str, *, allow_env: bool) -> Placeholder:
    namespace, dot, name = inner.partition(".")
    unknown = TemplateError(f"unknown placeholder {{{inner}}} in {text!r}: use {_EXAMPLES}")
    if not dot:
        raise unknown
    if namespace == LABELS:
        if not LABEL_NAME.fullmatch(name):
            raise TemplateError(f"{{{inner}}} in {text!r}: {name!r} is not a valid label name")
    elif namespace == INCIDENT:
        if name not in INCIDENT_FIELDS:
            raise unknown
    elif namespace == REMEDIATION:
        if name not in REMEDIATION_FIELDS:
            raise unknown
    elif namespace == ENV:
        if not allow_env:
            raise TemplateError(
                f"{{{inner}}} in {text!r}: environment variables may be used only in "
                "http headers and command env, where they are never logged or shown"
            )
        if not ENV_NAME.fullmatch(name):
            raise TemplateError(
                f"{{{inner}}} in {text!r}: {name!r} is not a valid environment variable name"
            )
    else:
        raise unknown
    return Placeholder(namespace, name)


def check_template(text: str, *, allow_env: bool = False) -> str:
    """``text`` unchanged when it is a valid template, else TemplateError."""
    parse_template(text, allow_env=allow_env)
    return text


def sole_placeholder(text: str, *, allow_env: bool = False) -> Placeholder | None:
    """The placeholder when ``text`` is exactly one placeholder and nothing else."""
    pieces = parse_template(text, allow_env=allow_env)
    if len(pieces) == 1 and isinstance(pieces[0], Placeholder):
        return pieces[0]
    return None


def has_placeholders(text: str, *, allow_env: bool = False) -> bool:
    return any(
        isinstance(piece, Placeholder) for piece in parse_template(text, allow_env=allow_env)
    )


@dataclass(frozen=True)
class TemplateValues:
    """What placeholders stand for.

    ``env`` None means "show, do not read": ``{env.NAME}`` renders as
    ``<from $NAME>``. Incident fields absent from ``incident`` (``incident
    rules test`` has no incident yet) render as their own placeholder text.
    """

    labels: Mapping[str, str]
    incident: Mapping[str, str | int] = field(default_factory=dict)
    remediation: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] | None = None

    def lookup(self, placeholder: Placeholder) -> str | int:
        namespace, name = placeholder.namespace, placeholder.name
        if namespace == LABELS:
            value = self.labels.get(name)
            # Prometheus treats an empty label as an absent one; an empty path
            # segment or argument would change what the action means.
            if not value:
                raise MissingLabel(name)
            return value
        if namespace == ENV:
            if self.env is None:
                return Shown(f"<from ${name}>")
            if name not in self.env:
                raise MissingEnvironmentVariable(name)
            return self.env[name]
        known = self.incident if namespace == INCIDENT else self.remediation
        if name not in known:
            return Shown(placeholder.text)
        return known[name]


def render(
    text: str,
    values: TemplateValues,
    *,
    allow_env: bool = False,
    escape: Callable[[str], str] | None = None,
) -> str:
    """``text`` with every placeholder replaced; ``escape`` applies to values, not literal text."""
    rendered: list[str] = []
    for piece in parse_template(text, allow_env=allow_env):
        if isinstance(piece, str):
            rendered.append(piece)
            continue
        value = values.lookup(piece)
        shown = str(value)
        if escape is not None and not isinstance(value, Shown):
            shown = escape(shown)
        rendered.append(shown)
    return "".join(rendered)


def render_value(text: str, values: TemplateValues) -> str | int:
    """Like ``render``, but a string that is one placeholder becomes its value, typed.

    So ``"{incident.id}"`` in a JSON body is the number 42, not the text "42".
    """
    placeholder = sole_placeholder(text)
    if placeholder is not None:
        return values.lookup(placeholder)
    return render(text, values)


def escape_url_value(value: str) -> str:
    """A value made inert in a URL path or query: it cannot add a segment, a query or a host."""
    return quote(value, safe="")


class UnsafePathValue(RenderError):
    """A value that would change which path a request goes to, even escaped."""


def render_url(text: str, values: TemplateValues) -> str:
    """``text`` with every value escaped; a value in the path must be an ordinary segment.

    Escaping is not enough there: proxies and frameworks decode ``%2E%2E``,
    ``%2F`` and ``%5C`` before routing, so ``..`` or ``a/../b`` would still
    move the request up the path. Such values are refused, never encoded.
    """
    rendered: list[str] = []
    in_path = True
    for piece in parse_template(text):
        if isinstance(piece, str):
            rendered.append(piece)
            if "?" in piece or "#" in piece:
                in_path = False
            continue
        value = values.lookup(piece)
        if isinstance(value, Shown):
            rendered.append(value)
            continue
        if in_path:
            check_path_value(piece, str(value))
        rendered.append(escape_url_value(str(value)))
    return "".join(rendered)


def check_path_value(placeholder: Placeholder, value: str) -> None:
    """UnsafePathValue when ``value`` is a dot segment or holds a path separator.

    Checked in NFKC form too: some servers fold fullwidth dots and slashes
    into ASCII before routing.
    """
    for form in (value, unicodedata.normalize("NFKC", value)):
        if form in (".", ".."):
            reason = "a dot segment, moving the request up the path"
        elif "/" in form or "\\" in form:
            reason = "a path separator, adding path segments"
        else:
            continue
        raise UnsafePathValue(
            f"{placeholder.text} is {_short(value)}, which in the url path would be {reason}; "
            "a value there may not be '.' or '..' nor contain '/' or '\\'"
        )


def _short(value: str, limit: int = 60) -> str:
    # Label values may be 100 KB: enough of one to recognise it.
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value)} characters)"


__all__ = [
    "ENV",
    "INCIDENT",
    "INCIDENT_FIELDS",
    "LABELS",
    "REMEDIATION",
    "MissingEnvironmentVariable",
    "MissingLabel",
    "Placeholder",
    "RenderError",
    "Shown",
    "TemplateError",
    "TemplateValues",
    "UnsafePathValue",
    "check_path_value",
    "check_template",
    "escape_url_value",
    "has_placeholders",
    "parse_template",
    "render",
    "render_url",
    "render_value",
    "sole_placeholder",
]
