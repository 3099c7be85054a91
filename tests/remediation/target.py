"""A remediation target: an HTTP service that records each call and fails as scripted."""

from __future__ import annotations

from typing import Any

from tests.fakes.http_server import FakeHTTPService, Reply, ScriptedFailure


class FakeTarget(FakeHTTPService):
    """Answers 200 unless told to fail (``fail_next``) or to always fail (``failing``)."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def handle(self, method: str, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        if self.failing:
            return Reply(503, {"error": "still broken"})
        return Reply(200, {"restarted": True})

    def scripted_reply(self, failure: ScriptedFailure) -> Reply:
        return Reply(failure.status or 500, {"error": failure.error or "scripted failure"})
