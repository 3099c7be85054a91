"""The ``http`` action: one request to a fixed host, label values escaped into its path or query."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from incident import __version__
from incident.remediation.context import (
    ActionOutcome,
    CapturedOutput,
    RemediationContext,
    shown_value,
)
from incident.remediation.time_limit import AttemptTimedOut, time_limit
from incident.rules.remediations import HttpActionSettings
from incident.rules.templates import (
    Placeholder,
    RenderError,
    TemplateValues,
    parse_template,
    render,
    render_url,
    render_value,
)

# Methods that carry no body unless the rule writes one.
_BODILESS = frozenset({"GET", "DELETE"})
# The output keeps 4 KiB of the body; reading on would only cost time.
_MAX_BODY_READ = 1024 * 1024
# Control characters other than tab: CR and LF would start a new header or a
# second request, and the rest are refused by the client anyway.
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# HTTP forbids a header value to begin or end with one of these (RFC 9110 5.5).
_EDGE_BLANKS = " \t"

# Sent when the rule writes no body: the incident, one string per placeholder
# so that {incident.id} stays a number.
_DEFAULT_BODY: dict[str, Any] = {
    "remediation": "{remediation.name}",
    "incident": {
        "id": "{incident.id}",
        "key": "{incident.key}",
        "title": "{incident.title}",
        "severity": "{incident.severity}",
        "url": "{incident.url}",
    },
}


@dataclass(frozen=True)
class PreparedRequest:
    method: str
    url: httpx.URL
    # As rendered, before the client's normalisation: what describe() shows.
    url_text: str
    headers: dict[str, str]
    has_body: bool
    body: Any

    def content(self) -> bytes | None:
        if not self.has_body:
            return None
        return json.dumps(self.body, ensure_ascii=False).encode()


def prepare_request(settings: HttpActionSettings, values: TemplateValues) -> PreparedRequest:
    """The request, rendered and checked; RenderError when it must not be sent."""
    url_text = render_url(settings.url, values)
    url = _checked_url(url_text, settings.url)
    headers = {"User-Agent": f"incident/{__version__} remediation"}
    for name, template in settings.headers.items():
        # The value may hold a secret ({env.…}): errors name the header, never quote it.
        value = render(template, values, allow_env=True)
        if _CONTROL_CHARACTERS.search(value):
            raise RenderError(
                f"header {name!r} would contain a line break or another control character"
            )
        if value != value.strip(_EDGE_BLANKS):
            raise RenderError(
                f"header {name!r} would begin or end with a space or tab, "
                "which HTTP does not allow in a header value"
            )
        headers[name] = value
    if settings.has_body:
        has_body, body = settings.body is not None, _render_json(settings.body, values)
    elif settings.method in _BODILESS:
        has_body, body = False, None
    else:
        has_body, body = True, _render_json(_DEFAULT_BODY, values)
        body["incident"]["labels"] = dict(values.labels)
    if has_body and not any(name.lower() == "content-type" for name in headers):
        headers["Content-Type"] = "application/json"
    return PreparedRequest(settings.method, url, url_text, headers, has_body, body)


def _checked_url(rendered: str, template: str) -> httpx.URL:
    try:
        url = httpx.URL(rendered)
    except httpx.InvalidURL as error:
        raise RenderError(f"the rendered url is not valid: {error}") from None
    # Escaping already keeps label values out of the authority; checking the
    # result as well means one escaping bug cannot send the request elsewhere.
    parts = urlsplit(template)
    expected = httpx.URL(f"{parts.scheme}://{parts.netloc}/")
    if _origin(url) != _origin(expected):
        raise RenderError(
            f"the rendered url {shown_value(str(url))} does not go to {_describe_origin(expected)}"
        )
    prefix = _fixed_path(template)
    if not url.raw_path.split(b"?")[0].startswith(prefix):
        raise RenderError(
            f"the rendered url {shown_value(str(url))} leaves the path "
            f"{prefix.decode(errors='replace')!r} that the rule fixes"
        )
    return url


def _fixed_path(template: str) -> bytes:
    """The path the template's literal start fixes, as the client will send it."""
    literal = ""
    for piece in parse_template(template):
        if isinstance(piece, Placeholder):
            break
        literal += piece
    literal = literal.split("?")[0].split("#")[0]
    try:
        return httpx.URL(literal).raw_path.split(b"?")[0]
    except httpx.InvalidURL:
        return b"/"


def _origin(url: httpx.URL) -> tuple[str, str, str, int | None]:
    return (url.scheme, url.userinfo.decode(errors="replace"), url.host, url.port)


def _describe_origin(url: httpx.URL) -> str:
    return f"{url.scheme}://{url.netloc.decode(errors='replace')}"


def _render_json(value: Any, values: TemplateValues) -> Any:
    if isinstance(value, str):
        return render_value(value, values)
    if isinstance(value, Mapping):
        return {key: _render_json(item, values) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_render_json(item, values) for item in value]
    return value


def run_http(
    settings: HttpActionSettings, context: RemediationContext, timeout: float
) -> ActionOutcome:
    try:
        request = prepare_request(settings, context.template_values(env=os.environ))
    except RenderError as error:
        return ActionOutcome.refused(str(error))
    target = f"{request.method} {_without_query(request.url)}"
    try:
        with time_limit(timeout):
            status, location, output = _send(request, timeout)
    except (AttemptTimedOut, httpx.TimeoutException):
        return ActionOutcome.failure(f"{target} timed out after {timeout:g}s")
    except httpx.NetworkError as error:
        # The operating system's words: a refused connection, a reset, a name not found.
        return ActionOutcome.failure(f"{target} failed: {type(error).__name__}: {error}")
    except httpx.LocalProtocolError as error:
        # The request could not be written as HTTP; the client's message quotes
        # the offending bytes, which may be a header holding a secret.
        return ActionOutcome.refused(f"{target} could not be sent: {type(error).__name__}")
    except httpx.HTTPError as error:
        # Protocol errors and the rest may quote what was sent or received: the name only.
        return ActionOutcome.failure(f"{target} failed: {type(error).__name__}")
    if 200 <= status < 300:
        return ActionOutcome.success(output)
    if 300 <= status < 400:
        # Following it could take the request to a host the rule never named.
        where = f" to {shown_value(location)}" if location else ""
        return ActionOutcome.failure(
            f"{target} answered HTTP {status}, a redirect{where}, which is not followed",
            output=output,
            retryable=False,
        )
    error = f"{target} answered HTTP {status}"
    if status >= 500 or status in (408, 429):
        return ActionOutcome.failure(error, output=output)
    # The target is up and says this request is wrong (a label value it has no
    # route for, a path too long): retrying will not help, and its breaker
    # must not count it, or junk alerts could open it for real incidents.
    return ActionOutcome.refused(error, output=output)


def _send(request: PreparedRequest, timeout: float) -> tuple[int, str, str]:
    """Status, Location header and output ("HTTP 503" and the start of the body)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=timeout, follow_redirects=False) as client:
        sent = client.build_request(
            request.method,
            request.url,
            headers={name: value.encode() for name, value in request.headers.items()},
            content=request.content(),
        )
        response = client.send(sent, stream=True)
        try:
            captured = CapturedOutput()
            captured.add(f"HTTP {response.status_code}\n".encode())
            for chunk in response.iter_bytes():
                captured.add(chunk)
                # A server trickling bytes resets the read timeout on each one.
                if captured.total > _MAX_BODY_READ or time.monotonic() > deadline:
                    break
            return response.status_code, response.headers.get("location", ""), captured.text()
        finally:
            response.close()


def _without_query(url: httpx.URL) -> str:
    # A query may carry a literal token the rule author wrote in; errors are stored and shown.
    return str(url.copy_with(query=None, fragment=None))


def describe_http(settings: HttpActionSettings, values: TemplateValues) -> dict[str, Any]:
    try:
        request = prepare_request(settings, values)
    except RenderError as error:
        return {"error": str(error)}
    return {
        "method": request.method,
        "url": request.url_text,
        "headers": request.headers,
        "body": request.body,
    }


__all__ = ["PreparedRequest", "describe_http", "prepare_request", "run_http"]
