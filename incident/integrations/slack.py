"""Slack over ``slack_sdk.WebClient``: the parent message, its edits, thread
replies, digests, and finding what we already posted after a crash.

The SDK's retry handlers are off: a retry is Celery's decision (with backoff
and a limit), and a worker must never sleep inside a call. Every failure comes
out as a ``DeliveryError`` saying whether to retry.
"""

from __future__ import annotations

import re
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from http.client import HTTPException
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.web import SlackResponse

from incident import tracing

from incident.integrations.base import (
    NOTIFICATION_EVENT_TYPE,
    DeliveryError,
    IncidentView,
    PermanentDeliveryError,
    RateLimited,
    TransientDeliveryError,
    parse_retry_after,
)
from incident.integrations.slack_blocks import (
    notification_metadata,
    render_digest,
    render_parent,
    render_reply,
)

# Slack error strings that describe Slack's trouble, not ours.
TRANSIENT_SLACK_ERRORS = frozenset(
    {"internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
DEFAULT_RETRY_AFTER = 1.0
# Crash recovery looks at most this many pages of history (200 messages each).
MAX_SEARCH_PAGES = 5
PAGE_SIZE = 200
# Conversation ids (C…, G…, D…). chat.update and conversations.* accept only
# ids, although chat.postMessage also takes "#name".
_CHANNEL_ID = re.compile(r"[CGD][A-Z0-9]{8,}")


class SlackNotifier:
    """``SlackPoster`` for a Slack workspace, authenticated with a bot token.

    ``channel`` may be a name (``#incidents``) or an id; a name is resolved to
    its id (learnt from chat.postMessage, else conversations.list, which needs
    the ``channels:read`` scope), so prefer configuring the id.
    """

    def __init__(
        self,
        token: str,
        *,
        api_url: str = "https://slack.com/api/",
        timeout: int = 10,
        ca_bundle: str | None = None,
        interactive: bool = False,
    ) -> None:
        """``interactive``: parent messages carry buttons (Slack interactivity is set up)."""
        # None keeps urllib's default context, which honours SSL_CERT_FILE.
        context = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else None
        self._client = WebClient(
            token=token, base_url=api_url, timeout=timeout, ssl=context, retry_handlers=[]
        )
        self._interactive = interactive
        self._channel_ids: dict[str, str] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SlackNotifier(api_url={self._client.base_url!r})"

    def post_parent(
        self, channel: str, incident: IncidentView, *, ledger_id: int, stamp: str = ""
    ) -> str:
        text, blocks = render_parent(incident, interactive=self._interactive)
        metadata = notification_metadata(ledger_id, stamp=stamp, incident_id=incident.id)
        return self._post(channel, text=text, blocks=blocks, metadata=metadata)

    def update_parent(self, channel: str, ts: str, incident: IncidentView) -> None:
        text, blocks = render_parent(incident, interactive=self._interactive)
        channel_id = self._channel_id(channel)
        # Without `metadata`, Slack keeps the message's metadata: the ledger id stays.
        self._call(
            "chat.update",
            lambda: self._client.chat_update(channel=channel_id, ts=ts, text=text, blocks=blocks),
        )

    def reply(
        self, channel: str, thread_ts: str, text: str, *, ledger_id: int, stamp: str = ""
    ) -> str:
        return self._post(
            channel,
            text=render_reply(text),
            thread_ts=thread_ts,
            metadata=notification_metadata(ledger_id, stamp=stamp),
        )

    def post_digest(
        self, channel: str, lines: list[str], *, ledger_id: int,
        covers: Sequence[tuple[int, str]] = (),
    ) -> str:
        text, blocks = render_digest(lines)
        metadata = notification_metadata(ledger_id, covers=[list(each) for each in covers])
        return self._post(channel, text=text, blocks=blocks, metadata=metadata)

    def post_message(
        self, channel: str, text: str, blocks: list[dict[str, Any]], *, ledger_id: int,
        stamp: str = "",
    ) -> str:
        """Post a top-level message already rendered (a storm message, its summary)."""
        metadata = notification_metadata(ledger_id, stamp=stamp)
        return self._post(channel, text=text, blocks=blocks, metadata=metadata)

    def update_message(
        self, channel: str, ts: str, text: str, blocks: list[dict[str, Any]]
    ) -> None:
        """Edit a message in place; Slack keeps its metadata."""
        channel_id = self._channel_id(channel)
        self._call(
            "chat.update",
            lambda: self._client.chat_update(channel=channel_id, ts=ts, text=text, blocks=blocks),
        )

    def find_digested(
        self, channel: str, *, rows: Sequence[tuple[int, str]], oldest: float | None = None
    ) -> dict[int, str]:
        """For each ledger row (id, stamp) a digest already posted covers: that digest's ``ts``.

        One pass over the channel's history, however many rows are asked about.
        """
        channel_id = self._channel_id(channel)
        query = {"oldest": f"{oldest:.6f}"} if oldest is not None else {}
        wanted = {(int(ledger_id), str(stamp)) for ledger_id, stamp in rows}
        found: dict[int, str] = {}
        fetch = self._client.conversations_history
        for page in self._pages("conversations.history", fetch, channel=channel_id, **query):
            for message in page.get("messages") or []:
                metadata = message.get("metadata") or {}
                if metadata.get("event_type") != NOTIFICATION_EVENT_TYPE:
                    continue
                for covered in (metadata.get("event_payload") or {}).get("covers") or []:
                    if isinstance(covered, list) and len(covered) == 2:
                        identity = (covered[0], covered[1])
                        if identity in wanted:
                            found[int(covered[0])] = str(message["ts"])
            if len(found) == len(wanted):
                break
        return found

    def find_posted(
        self,
        channel: str,
        *,
        ledger_id: int,
        stamp: str = "",
        thread_ts: str | None = None,
        oldest: float | None = None,
    ) -> str | None:
        channel_id = self._channel_id(channel)
        if thread_ts:
            method = "conversations.replies"
            fetch = self._client.conversations_replies
            query: dict[str, Any] = {"ts": thread_ts}
        else:
            method = "conversations.history"
            fetch = self._client.conversations_history
            query = {"oldest": f"{oldest:.6f}"} if oldest is not None else {}
        for page in self._pages(method, fetch, channel=channel_id, **query):
            for message in page.get("messages") or []:
                if _ledger_identity_of(message) == (ledger_id, stamp):
                    return str(message["ts"])
        return None

    def _post(self, channel: str, **message: Any) -> str:
        response = self._call(
            "chat.postMessage",
            lambda: self._client.chat_postMessage(
                channel=channel, unfurl_links=False, unfurl_media=False, **message
            ),
        )
        if response.get("channel"):
            with self._lock:
                self._channel_ids[channel] = response["channel"]
        return str(response["ts"])

    def _channel_id(self, channel: str) -> str:
        if _CHANNEL_ID.fullmatch(channel):
            return channel
        with self._lock:
            known = self._channel_ids.get(channel)
        if known:
            return known
        name = channel.lstrip("#")
        for page in self._pages(
            "conversations.list",
            self._client.conversations_list,
            types="public_channel,private_channel",
            exclude_archived=True,
        ):
            for found in page.get("channels") or []:
                if found.get("name") == name:
                    with self._lock:
                        self._channel_ids[channel] = found["id"]
                    return str(found["id"])
        raise PermanentDeliveryError(
            f"Slack channel {channel!r} not found; set INCIDENT_SLACK_CHANNEL to its id",
            code="channel_not_found",
        )

    def _pages(
        self, method: str, fetch: Callable[..., SlackResponse], **arguments: Any
    ) -> Iterator[SlackResponse]:
        cursor = None
        for _ in range(MAX_SEARCH_PAGES):
            page = self._call(
                method,
                lambda cursor=cursor: fetch(
                    include_all_metadata=True, limit=PAGE_SIZE, cursor=cursor, **arguments
                ),
            )
            yield page
            cursor = (page.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                return

    def _call(self, method: str, send: Callable[[], SlackResponse]) -> SlackResponse:
        try:
            # slack_sdk's client is urllib, which our OpenTelemetry set has no
            # instrumentation for: each API call is a client span of its own.
            with tracing.client_span(
                f"slack {method}", **{"rpc.system": "slack", "rpc.method": method,
                                      "url.full": self._client.base_url + method}
            ):
                return send()
        except SlackApiError as exc:
            raise slack_delivery_error(method, exc) from exc
        except (OSError, HTTPException) as exc:
            # urllib's URLError, socket timeouts, refused connections and TLS
            # failures are all OSErrors; a half-read answer is an HTTPException.
            raise TransientDeliveryError(
                f"Slack {method}: {type(exc).__name__}: {exc}",
                code=type(exc).__name__,
                maybe_delivered=True,
            ) from exc


def _ledger_identity_of(message: dict[str, Any]) -> tuple[int, str] | None:
    """The ledger row a message was posted for: its id and its creation stamp."""
    metadata = message.get("metadata") or {}
    if metadata.get("event_type") != NOTIFICATION_EVENT_TYPE:
        return None
    payload = metadata.get("event_payload") or {}
    try:
        return int(payload.get("ledger_id")), str(payload.get("stamp", ""))
    except (TypeError, ValueError):
        return None


def slack_delivery_error(method: str, exc: SlackApiError) -> DeliveryError:
    """Slack's answer as a typed error (OnCall's ``apps/slack/errors.py`` idea)."""
    response = exc.response
    status = response.status_code
    data = response.data if isinstance(response.data, dict) else {}
    error = str(data.get("error") or "")
    # The SDK puts a long explanation there when the body was not JSON.
    code = error if re.fullmatch(r"[a-z_]+", error) else f"http_{status}"
    if status == 429 or code == "ratelimited":
        headers = {name.lower(): value for name, value in (response.headers or {}).items()}
        retry_after = parse_retry_after(_header_value(headers.get("retry-after")))
        return RateLimited(
            f"Slack {method}: rate limited",
            retry_after=DEFAULT_RETRY_AFTER if retry_after is None else retry_after,
            code="ratelimited",
        )
    if status >= 500 or code in TRANSIENT_SLACK_ERRORS:
        return TransientDeliveryError(f"Slack {method}: {code} (HTTP {status})", code=code)
    return PermanentDeliveryError(f"Slack {method}: {code}", code=code)


def _header_value(value: Any) -> str | None:
    # The SDK's headers are str for urllib answers, lists for some retried ones.
    if isinstance(value, list | tuple):
        return str(value[0]) if value else None
    return None if value is None else str(value)
