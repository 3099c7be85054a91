"""A fake for Slack's ``response_url``s: each click's URL is a path on this
server, and every message posted to one is recorded, as Slack would show it
to the clicker."""

from __future__ import annotations

import secrets
from typing import Any

from tests.fakes.http_server import FakeHTTPService, Reply, ScriptedFailure


class FakeResponseUrls(FakeHTTPService):
    def new_url(self) -> str:
        """A fresh response_url, shaped like Slack's (``/actions/T…/…/…``)."""
        return (f"http://127.0.0.1:{self.port}/actions/T0FAKE/"
                f"{secrets.randbelow(10**12)}/{secrets.token_hex(12)}")

    def notes(self, url: str) -> list[dict[str, Any]]:
        """What was posted to ``url``, in order."""
        path = url.split(f":{self.port}", 1)[1]
        return [request.body for request in self.calls(path)]

    def handle(self, method: str, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        if not method.startswith("/actions/"):
            return Reply(404, "no_service")
        return Reply(200, "ok")

    def scripted_reply(self, failure: ScriptedFailure) -> Reply:
        return Reply(failure.status or 500, failure.error or "internal_error")
