"""The receiver as operators run it: `incident api` (uvicorn) in its own process, over raw HTTP.

A smaller generated sample than the in-process fuzzing, plus what only a real
HTTP server shows: Content-Length that disagrees with the body, chunked bodies
over the limit, ambiguous framing, and a client that hangs up mid-body.
"""

from __future__ import annotations

import socket
import time

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from incident.config import get_settings
from tests.conftest import WEBHOOK_TOKEN, ApiProcess
from tests.factories import alert, payload
from tests.fuzz.conftest import (
    RECEIVER_STATUSES,
    URL,
    WEBHOOK_HEADERS,
    alertmanager_payloads,
    assert_rejection_names_fields,
    broken_payloads,
    dumps,
    fuzz_settings,
    group_of,
    padded,
)

pytestmark = pytest.mark.fuzz


@pytest.fixture(scope="module")
def api_server(incident_environment, tmp_path_factory):
    server = ApiProcess(incident_environment, tmp_path_factory.mktemp("api") / "api.log")
    server.wait_ready()
    yield server
    server.stop()


_HEAD = (
    b"POST /webhooks/alertmanager HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n"
    b"Authorization: Bearer " + WEBHOOK_TOKEN.encode() + b"\r\nContent-Type: application/json\r\n"
)


def exchange(server: ApiProcess, request: bytes, *, half_close: bool = False, wait: float = 10) -> bytes:
    """Send raw bytes, read until the server closes; what came back."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=wait) as conn:
        conn.sendall(request)
        if half_close:
            conn.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _chunked(data: bytes, size: int = 1 << 16) -> bytes:
    pieces = [data[i:i + size] for i in range(0, len(data), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def test_a_real_server_answers_generated_payloads_like_the_app_in_process(api_server, verdict):
    """A smaller sample over real HTTP: uvicorn, its parser and the process's own settings."""
    firing_by_group: dict[str, bool] = {}

    with httpx.Client(base_url=api_server.url, headers=WEBHOOK_HEADERS, timeout=30) as client:

        @fuzz_settings(40)
        @given(case=st.one_of(
            alertmanager_payloads().map(lambda body: (body, None)), broken_payloads(),
        ))
        def answered(case: tuple[dict, list[str] | None]) -> None:
            body, broken = case
            response = client.post(URL, content=dumps(body))
            assert response.status_code in RECEIVER_STATUSES, response.text[:300]
            if broken is not None:
                named = assert_rejection_names_fields(response)
                assert all(path in named for path in broken), (broken, named)
                return
            assert response.status_code == 202, response.text[:300]
            group = group_of(body)
            fires = any(a["status"] == "firing" for a in body["alerts"])
            firing_by_group[group] = firing_by_group.get(group, False) or fires

        answered()
    counts = verdict.settle(set(firing_by_group))
    verdict.assert_healthy()
    assert set(counts) == set(firing_by_group)
    assert all(counts[g] for g, fired in firing_by_group.items() if fired)
    api_server.check_alive()
    assert "Exception in ASGI application" not in api_server.log()


def test_a_real_server_refuses_a_declared_oversize_body_before_it_is_sent(api_server):
    limit = get_settings().max_body_bytes
    answer = exchange(api_server, _HEAD + b"Content-Length: %d\r\n\r\n" % (limit + 1))
    assert status_of(answer) == 413
    assert b'"error"' in answer


def test_a_real_server_cuts_a_chunked_body_off_at_the_limit(api_server):
    limit = get_settings().max_body_bytes
    body = padded(limit + 1)
    answer = exchange(api_server, _HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(body))
    assert status_of(answer) == 413


def test_a_real_server_accepts_a_valid_chunked_body(api_server, verdict):
    body = payload(alert(instance="chunked"))
    answer = exchange(api_server, _HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(dumps(body), 7))
    assert status_of(answer) == 202
    assert verdict.settle({group_of(body)}) == {group_of(body): 1}
    verdict.assert_healthy()


def test_a_real_server_reads_only_the_declared_length(api_server):
    body = dumps(payload(alert(instance="short")))
    answer = exchange(api_server, _HEAD + b"Content-Length: %d\r\n\r\n" % (len(body) - 5) + body)
    assert status_of(answer) == 400
    assert b"not valid JSON" in answer


@pytest.mark.parametrize(
    "framing",
    [b"Content-Length: \xb2\r\n", b"Content-Length: 5\r\nContent-Length: 6\r\n",
     b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"Content-Length: -1\r\n",
     b"Transfer-Encoding: gzip, chunked, identity\r\n"],
    ids=["unicode-digit", "two-lengths", "length-and-chunked", "negative", "odd-encoding"],
)
def test_a_real_server_refuses_ambiguous_framing_with_4xx(api_server, framing):
    body = dumps(payload(alert(instance="framing")))
    answer = exchange(api_server, _HEAD + framing + b"\r\n" + _chunked(body))
    assert 400 <= status_of(answer) < 500
    api_server.check_alive()


def test_a_client_that_hangs_up_mid_body_leaves_no_traceback(api_server):
    before = len(api_server.log())
    body = dumps(payload(alert(instance="hangup")))
    answer = exchange(
        api_server, _HEAD + b"Content-Length: %d\r\n\r\n" % (len(body) + 100) + body,
        half_close=True,
    )
    assert answer == b""  # nobody left to answer
    time.sleep(0.5)
    api_server.check_alive()
    assert "Exception in ASGI application" not in api_server.log()[before:]
