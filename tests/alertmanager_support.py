"""A real Alertmanager for the tests: the binary `make test` installs, one process per use."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from incident.embedded import free_port
from tests.conftest import WEBHOOK_TOKEN, ChildProcess

WAIT = 30.0
RECEIVER = "incident"
GROUP_WAIT, GROUP_INTERVAL, REPEAT_INTERVAL = 1, 2, 4


def alertmanager_config(webhook_url: str) -> dict[str, Any]:
    return {
        "route": {
            "receiver": RECEIVER,
            "group_by": ["alertname", "service"],
            "group_wait": f"{GROUP_WAIT}s",
            "group_interval": f"{GROUP_INTERVAL}s",
            "repeat_interval": f"{REPEAT_INTERVAL}s",
        },
        "receivers": [{
            "name": RECEIVER,
            "webhook_configs": [{
                "url": webhook_url,
                "send_resolved": True,
                "http_config": {
                    "authorization": {"type": "Bearer", "credentials": WEBHOOK_TOKEN},
                },
            }],
        }],
    }


class AlertmanagerProcess(ChildProcess):
    """One Alertmanager, clustering off, its state in a directory of its own."""

    name = "alertmanager"

    def __init__(self, binary: str, workdir: Path, webhook_url: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "alertmanager.yml"
        config.write_text(yaml.safe_dump(alertmanager_config(webhook_url)))
        super().__init__(
            [
                binary,
                f"--config.file={config}",
                f"--storage.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
                "--log.level=debug",
            ],
            workdir / "alertmanager.log",
        )

    def problems(self) -> str:
        """Its warnings and errors (a refused webhook, say), else the end of its log."""
        lines = [
            line for line in self.log().splitlines()
            if "level=error" in line or "level=warn" in line
        ]
        return "\n".join(lines[-10:]) if lines else self.log()[-3000:]

    def wait_ready(self) -> None:
        self.wait_http_ok(f"{self.url}/-/ready", timeout=WAIT)

    def post_alerts(self, *alerts: dict[str, Any]) -> None:
        response = httpx.post(f"{self.url}/api/v2/alerts", json=list(alerts), timeout=5)
        assert response.status_code == 200, response.text

    def stop(self) -> None:
        super().stop(grace=10)


class SlowProxy:
    """Forwards to Alertmanager, then answers later than the client waits."""

    def __init__(self, target: str, delay: float) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.posts = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _forward(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                answer = httpx.request(method, target + self.path, content=body,
                                       headers={"Content-Type": "application/json"}, timeout=5)
                if method == "POST":
                    proxy.posts += 1
                    proxy.released.wait(delay)
                self.send_response(answer.status_code)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(answer.content)

            def do_POST(self) -> None:
                self._forward("POST")

            def do_GET(self) -> None:
                self._forward("GET")

        self.released = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def alertmanager_binary() -> str:
    found = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if found:
        return found
    reason = (
        "the Alertmanager binary (prometheus-alertmanager) is not installed; "
        "run `make test`, which installs Debian's prometheus-alertmanager"
    )
    if os.environ.get("INCIDENT_TEST_SKIP_ALERTMANAGER") == "1":
        pytest.skip(f"INCIDENT_TEST_SKIP_ALERTMANAGER=1: {reason}")
    pytest.fail(reason, pytrace=False)


@pytest.fixture(scope="module")
def real_alertmanager(
    alertmanager_binary: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AlertmanagerProcess]:
    """One Alertmanager for the module's silences; nothing it notifies is listened to."""
    process = AlertmanagerProcess(
        alertmanager_binary, tmp_path_factory.mktemp("alertmanager"), "http://127.0.0.1:9/unused"
    )
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()
