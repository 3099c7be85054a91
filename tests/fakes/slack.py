"""A fake Slack Web API that the real ``slack_sdk.WebClient`` talks to.

It behaves like Slack where our code could get it wrong: the bearer token is
checked, chat.postMessage takes a channel name or id and answers with the id,
while chat.update and conversations.* take only ids (``channel_not_found``
otherwise); message metadata is returned only with ``include_all_metadata``;
``oldest`` is exclusive; pages follow ``next_cursor``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from tests.fakes.http_server import FakeHTTPService, Reply, ScriptedFailure

DEFAULT_TOKEN = "xoxb-fake-0000-token"


@dataclass
class FakeMessage:
    ts: str
    channel: str  # the channel id
    text: str | None
    blocks: list[dict[str, Any]] | None
    thread_ts: str | None
    metadata: dict[str, Any] | None
    edits: int = 0


class FakeSlack(FakeHTTPService):
    def __init__(self, *, token: str = DEFAULT_TOKEN, channels: tuple[str, ...] = ("incidents",)):
        super().__init__()
        self.token = token
        self._channels: dict[str, str] = {}  # name -> id
        self._messages: dict[str, FakeMessage] = {}
        self._last_ts = 0.0
        for name in channels:
            self.add_channel(name)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    def add_channel(self, name: str) -> str:
        with self._lock:
            name = name.lstrip("#")
            return self._channels.setdefault(name, f"C{len(self._channels) + 1:010d}")

    def channel_id(self, name: str) -> str:
        with self._lock:
            return self._channels[name.lstrip("#")]

    @property
    def messages(self) -> list[FakeMessage]:
        with self._lock:
            return [FakeMessage(**vars(m)) for m in self._messages.values()]

    def message(self, ts: str) -> FakeMessage:
        with self._lock:
            return FakeMessage(**vars(self._messages[ts]))

    def parents(self, channel: str) -> list[FakeMessage]:
        with self._lock:
            channel_id = self._resolve(channel, names=True) or channel
        return [m for m in self.messages if m.channel == channel_id and m.thread_ts is None]

    def replies(self, thread_ts: str) -> list[FakeMessage]:
        return [m for m in self.messages if m.thread_ts == thread_ts]

    # --- the API ---------------------------------------------------------

    def method_name(self, path: str) -> str:
        return path.rsplit("/api/", 1)[-1]

    def scripted_reply(self, failure: ScriptedFailure) -> Reply:
        status = failure.status or 200
        if status == 429:
            retry_after = 1 if failure.retry_after is None else failure.retry_after
            return Reply(
                429, {"ok": False, "error": "ratelimited"}, {"Retry-After": f"{retry_after:g}"}
            )
        if status >= 500 and failure.error is None:
            # What a load balancer in front of Slack answers: not JSON.
            return Reply(status, "upstream connect error or disconnect/reset before headers")
        return Reply(status, {"ok": False, "error": failure.error or "invalid_request"})

    def handle(self, method: str, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        if headers.get("authorization") != f"Bearer {self.token}":
            error = "not_authed" if "authorization" not in headers else "invalid_auth"
            return Reply(200, {"ok": False, "error": error})
        answer = getattr(self, "_" + method.replace(".", "_"), None)
        if answer is None:
            return Reply(404, {"ok": False, "error": "unknown_method"})
        try:
            return Reply(200, {"ok": True, **answer(body)})
        except _SlackError as error:
            return Reply(200, {"ok": False, "error": str(error)})

    def _auth_test(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"user_id": "U0FAKEBOT", "team_id": "T0FAKE", "bot_id": "B0FAKEBOT"}

    def _chat_postMessage(self, body: dict[str, Any]) -> dict[str, Any]:
        channel = self._resolve(body.get("channel", ""), names=True)
        if channel is None:
            raise _SlackError("channel_not_found")
        if not body.get("text") and not body.get("blocks"):
            raise _SlackError("no_text")
        ts = self._next_ts()
        message = FakeMessage(
            ts=ts,
            channel=channel,
            text=body.get("text"),
            blocks=_json_field(body.get("blocks")),
            thread_ts=body.get("thread_ts"),
            metadata=_json_field(body.get("metadata")),
        )
        self._messages[ts] = message
        return {"channel": channel, "ts": ts, "message": self._render(message, metadata=False)}

    def _chat_update(self, body: dict[str, Any]) -> dict[str, Any]:
        channel = self._resolve(body.get("channel", ""), names=False)
        if channel is None:
            raise _SlackError("channel_not_found")
        message = self._messages.get(body.get("ts", ""))
        if message is None or message.channel != channel:
            raise _SlackError("message_not_found")
        message.text = body.get("text", message.text)
        if "blocks" in body:
            message.blocks = _json_field(body["blocks"])
        if "metadata" in body:  # omitted: Slack keeps the message's metadata
            message.metadata = _json_field(body["metadata"]) or None
        message.edits += 1
        return {"channel": channel, "ts": message.ts, "text": message.text}

    def _conversations_history(self, body: dict[str, Any]) -> dict[str, Any]:
        channel = self._conversation(body)
        oldest = float(body.get("oldest") or 0)
        latest = float(body.get("latest") or "inf")
        found = [
            m
            for m in self._messages.values()
            if m.channel == channel
            and m.thread_ts in (None, m.ts)
            and oldest < float(m.ts) <= latest
        ]
        found.sort(key=lambda m: float(m.ts), reverse=True)
        return self._page(found, body, key="messages")

    def _conversations_replies(self, body: dict[str, Any]) -> dict[str, Any]:
        channel = self._conversation(body)
        parent = self._messages.get(body.get("ts", ""))
        if parent is None or parent.channel != channel:
            raise _SlackError("thread_not_found")
        thread = [parent] + sorted(
            (m for m in self._messages.values() if m.thread_ts == parent.ts and m is not parent),
            key=lambda m: float(m.ts),
        )
        return self._page(thread, body, key="messages")

    def _conversations_list(self, body: dict[str, Any]) -> dict[str, Any]:
        channels = [
            {"id": cid, "name": name, "is_channel": True} for name, cid in self._channels.items()
        ]
        return self._page(channels, body, key="channels")

    # --- helpers ---------------------------------------------------------

    def _resolve(self, channel: str, *, names: bool) -> str | None:
        if channel in self._channels.values():
            return channel
        if names:
            return self._channels.get(channel.lstrip("#"))
        return None

    def _conversation(self, body: dict[str, Any]) -> str:
        channel = self._resolve(body.get("channel", ""), names=False)
        if channel is None:
            raise _SlackError("channel_not_found")
        return channel

    def _page(self, items: list[Any], body: dict[str, Any], *, key: str) -> dict[str, Any]:
        start = int(body.get("cursor") or 0)
        limit = int(body.get("limit") or 100)
        chunk = items[start : start + limit]
        if key == "messages":
            with_metadata = str(body.get("include_all_metadata", "")).lower() in ("1", "true")
            chunk = [self._render(m, metadata=with_metadata) for m in chunk]
        more = start + limit < len(items)
        return {
            key: chunk,
            "has_more": more,
            "response_metadata": {"next_cursor": str(start + limit) if more else ""},
        }

    def _render(self, message: FakeMessage, *, metadata: bool) -> dict[str, Any]:
        rendered: dict[str, Any] = {
            "type": "message",
            "ts": message.ts,
            "text": message.text or "",
            "user": "U0FAKEBOT",
            "bot_id": "B0FAKEBOT",
            "app_id": "A0FAKEAPP",
        }
        if message.blocks:
            rendered["blocks"] = message.blocks
        replies = [m for m in self._messages.values() if m.thread_ts == message.ts]
        if message.thread_ts:
            rendered["thread_ts"] = message.thread_ts
        elif replies:
            rendered.update(thread_ts=message.ts, reply_count=len(replies))
        if metadata and message.metadata:
            rendered["metadata"] = message.metadata
        return rendered

    def _next_ts(self) -> str:
        self._last_ts = max(time.time(), self._last_ts + 0.000001)
        return f"{self._last_ts:.6f}"


class _SlackError(Exception):
    pass


def _json_field(value: Any) -> Any:
    # Form-encoded calls carry blocks and metadata as JSON strings.
    if isinstance(value, str) and value:
        return json.loads(value)
    return value
