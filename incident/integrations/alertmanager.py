"""Alertmanager's v2 API for silences: create, look up, expire.

An HA cluster is a list of URLs tried in order; silences gossip between its
members, so one that took a silence is enough. A create that timed out may
still have been applied, so before creating again (on the same URL or the
next) the client looks for a silence carrying the request's reference, which
the caller puts in the comment: a retry never makes two silences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import structlog

log = structlog.get_logger(__name__)

DEFAULT_TIMEOUT = 5.0


class AlertmanagerError(RuntimeError):
    """Alertmanager did not do what was asked; the message says which URL and why."""


class AlertmanagerUnavailable(AlertmanagerError):
    """No URL of the list answered: try again later."""


class AlertmanagerRefused(AlertmanagerError):
    """Alertmanager answered and refused the request (a bad matcher, a bad time)."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        # Alertmanager's own words, without the URL: fit to pass on to a caller.
        self.reason = reason or message


@dataclass(frozen=True)
class SilenceMatcher:
    name: str
    value: str
    is_regex: bool = False
    is_equal: bool = True

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "isRegex": self.is_regex,
                "isEqual": self.is_equal}


@dataclass(frozen=True)
class SilenceRequest:
    matchers: Sequence[SilenceMatcher]
    starts_at: datetime
    ends_at: datetime
    created_by: str
    comment: str
    # A unique string inside ``comment``: how a retry finds what an earlier try made.
    reference: str

    def as_json(self) -> dict[str, Any]:
        return {
            "matchers": [m.as_json() for m in self.matchers],
            "startsAt": self.starts_at.isoformat(),
            "endsAt": self.ends_at.isoformat(),
            "createdBy": self.created_by,
            "comment": self.comment,
        }


@dataclass(frozen=True)
class Silence:
    id: str
    state: str  # active | pending | expired
    comment: str
    created_by: str


class Alertmanager:
    def __init__(
        self, urls: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not urls:
            raise ValueError("no Alertmanager URL")
        self.urls = [url.rstrip("/") for url in urls]
        self._client = httpx.Client(timeout=timeout, transport=transport, follow_redirects=False)

    def close(self) -> None:
        self._client.close()

    def create(self, request: SilenceRequest) -> Silence:
        """The silence, made once: looked up first after any try that timed out."""
        uncertain = False
        problems: list[str] = []
        for url in self.urls:
            try:
                if uncertain and (found := self._find(url, request.reference)) is not None:
                    return found
                answer = self._client.post(f"{url}/api/v2/silences", json=request.as_json())
            except httpx.TimeoutException as exc:
                uncertain = True
                problems.append(f"{_shown(url)}: timed out ({type(exc).__name__})")
                continue
            except httpx.TransportError as exc:
                problems.append(f"{_shown(url)}: {type(exc).__name__}")
                continue
            if answer.status_code >= 500:
                problems.append(f"{_shown(url)}: HTTP {answer.status_code}")
                continue
            _raise_refused(url, answer)
            silence_id = answer.json().get("silenceID")
            if not isinstance(silence_id, str) or not silence_id:
                raise AlertmanagerRefused(f"{_shown(url)} answered without a silenceID")
            log.info("alertmanager_silence_created", url=_shown(url), silence_id=silence_id)
            return Silence(silence_id, "active", request.comment, request.created_by)
        raise AlertmanagerUnavailable("no Alertmanager took the silence: " + "; ".join(problems))

    def find(self, reference: str) -> Silence | None:
        """The silence whose comment carries ``reference``, from the first URL that answers."""
        problems: list[str] = []
        for url in self.urls:
            try:
                return self._find(url, reference)
            except (httpx.TransportError, AlertmanagerUnavailable) as exc:
                problems.append(f"{_shown(url)}: {exc or type(exc).__name__}")
        raise AlertmanagerUnavailable("no Alertmanager answered: " + "; ".join(problems))

    def expire(self, silence_id: str) -> None:
        """Expire a silence; one already expired or unknown there counts as done."""
        problems: list[str] = []
        for url in self.urls:
            try:
                answer = self._client.delete(f"{url}/api/v2/silence/{silence_id}")
            except httpx.TransportError as exc:
                problems.append(f"{_shown(url)}: {type(exc).__name__}")
                continue
            if answer.status_code == 200 or answer.status_code == 404 or _already_expired(answer):
                log.info("alertmanager_silence_expired", url=_shown(url), silence_id=silence_id)
                return
            if answer.status_code >= 500:
                problems.append(f"{_shown(url)}: HTTP {answer.status_code}")
                continue
            _raise_refused(url, answer)
            return
        raise AlertmanagerUnavailable(
            f"no Alertmanager expired silence {silence_id}: " + "; ".join(problems)
        )

    def _find(self, url: str, reference: str) -> Silence | None:
        answer = self._client.get(f"{url}/api/v2/silences")
        if answer.status_code != 200:
            raise AlertmanagerUnavailable(f"{_shown(url)}: HTTP {answer.status_code} listing silences")
        for item in answer.json():
            if reference in str(item.get("comment", "")) and item.get("status", {}).get(
                "state"
            ) != "expired":
                return Silence(item["id"], item["status"]["state"], item["comment"],
                               item.get("createdBy", ""))
        return None


def _already_expired(answer: httpx.Response) -> bool:
    # Alertmanager answers 500 "silence … already expired" for one that is.
    return "already expired" in answer.text


def _raise_refused(url: str, answer: httpx.Response) -> None:
    if answer.status_code >= 400:
        reason = f"HTTP {answer.status_code}: " + (answer.text.strip()[:300] or "no detail")
        raise AlertmanagerRefused(f"{_shown(url)} refused: {reason}", reason)


def _shown(url: str) -> str:
    """The URL for messages and logs: credentials in it (``https://user:pass@am``) hidden."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))
