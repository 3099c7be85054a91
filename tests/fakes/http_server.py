"""What the fake services share: a threaded HTTP(S) server on 127.0.0.1 in a
background thread, every request recorded, and scripted trouble (failures and
delays for the next n requests), all safe to drive from the test thread."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit


@dataclass(frozen=True)
class RecordedRequest:
    method: str  # the API method ("chat.postMessage") or the path
    body: dict[str, Any]  # JSON, or form and query parameters
    headers: dict[str, str]
    at: float  # time.monotonic() when it arrived


@dataclass(frozen=True)
class ScriptedFailure:
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any  # dict/list as JSON; str as text/plain
    headers: dict[str, str] = field(default_factory=dict)


class FakeHTTPService:
    """Subclasses implement ``handle(method, body, headers)`` and
    ``scripted_reply(failure)``; this class runs the server."""

    def __init__(self, *, tls: ssl.SSLContext | None = None) -> None:
        self._tls = tls
        self._lock = threading.RLock()
        self._requests: list[RecordedRequest] = []
        self._failures: deque[ScriptedFailure] = deque()
        self._delays: deque[float] = deque()
        self._holds: deque[float] = deque()
        self._held = 0
        self._release = threading.Event()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------

    def start(self) -> Self:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.service = self
        if self._tls is not None:
            # The handshake happens in the handler thread, so a client that
            # refuses our certificate cannot stall the accept loop.
            server.socket = self._tls.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # ends any scripted delay or hold at once
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the fake first"
        return self._server.server_address[1]

    # --- scripting and inspection ------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int | None = None,
        error: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        with self._lock:
            self._failures.extend([ScriptedFailure(status, error, retry_after)] * n)

    def delay_next(self, n: int, seconds: float) -> None:
        """The next ``n`` requests are answered (normally) after ``seconds``."""
        with self._lock:
            self._delays.extend([seconds] * n)

    def hold_reply_next(self, n: int = 1, seconds: float = 60.0) -> None:
        """The next ``n`` requests take effect at once (the message is stored, the
        event accepted) but their answers wait ``seconds``, or until
        ``release_held()``: a reply lost after the service acted, as when the
        caller dies or times out mid-request."""
        with self._lock:
            self._release.clear()
            self._holds.extend([seconds] * n)

    def release_held(self) -> None:
        """Answer every held request now (to a caller that may be gone)."""
        self._release.set()

    @property
    def held(self) -> int:
        """How many requests have taken effect and are waiting for their answer."""
        with self._lock:
            return self._held

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def calls(self, method: str) -> list[RecordedRequest]:
        return [request for request in self.requests if request.method == method]

    # --- for subclasses ----------------------------------------------------

    def handle(self, method: str, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        raise NotImplementedError

    def scripted_reply(self, failure: ScriptedFailure) -> Reply:
        raise NotImplementedError

    def parse_body(self, raw: bytes, content_type: str) -> dict[str, Any]:
        if "json" in content_type:
            return json.loads(raw or b"{}")
        return dict(parse_qsl(raw.decode(), keep_blank_values=True))

    def _serve(self, handler: _Handler) -> Reply:
        parts = urlsplit(handler.path)
        raw = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        headers = {name.lower(): value for name, value in handler.headers.items()}
        try:
            body = self.parse_body(raw, headers.get("content-type", ""))
        except ValueError:
            body = {"_unparsable": raw.decode(errors="replace")}
        body = {**dict(parse_qsl(parts.query)), **body}
        method = self.method_name(parts.path)
        with self._lock:
            self._requests.append(RecordedRequest(method, body, headers, time.monotonic()))
            failure = self._failures.popleft() if self._failures else None
            delay = self._delays.popleft() if self._delays else 0.0
        if delay:
            self._stopping.wait(delay)
        if failure is not None:
            return self.scripted_reply(failure)
        with self._lock:
            reply = self.handle(method, body, headers)
            hold = self._holds.popleft() if self._holds else 0.0
            if hold:
                self._held += 1
        if hold:
            try:
                self._release.wait(hold)
            finally:
                with self._lock:
                    self._held -= 1
        return reply

    def method_name(self, path: str) -> str:
        return path


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    service: FakeHTTPService

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out, hang up or refuse our certificate are part of
        # the tests; their broken pipes are not worth a traceback.
        pass


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        reply = self.server.service._serve(self)
        if isinstance(reply.body, str):
            payload, content_type = reply.body.encode(), "text/plain; charset=utf-8"
        else:
            payload, content_type = (
                json.dumps(reply.body).encode(),
                "application/json; charset=utf-8",
            )
        self.send_response(reply.status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        pass
