"""Hostile input the fuzzing once found mishandled: one test per bug, each now fixed.

NUL characters, timestamps without an offset or outside years 1-9999 in UTC, a
fingerprint repeated within one payload, a NUL in a note, a non-ASCII
Content-Length. Every test accepts either right answer: a 422 naming the field
at the receiver, or a clean incident from the worker.
"""

from __future__ import annotations

import asyncio

import pytest

from incident.api.app import create_app
from incident.config import get_settings
from tests.conftest import WEBHOOK_TOKEN, wait_for
from tests.factories import alert, payload
from tests.fuzz.conftest import (
    API_HEADERS,
    URL,
    accepted_and_applied,
    assert_rejection_names_fields,
    dumps,
    either_rejected_naming_or_applied,
    group_of,
    post,
    set_path,
)

pytestmark = pytest.mark.fuzz



@pytest.mark.parametrize(
    ("path", "value"),
    [("alerts.0.labels.instance", "a\x00b"), ("alerts.0.annotations.summary", "\x00"),
     ("receiver", "incident\x00"), ("groupKey", "{}:{g=\"\x00\"}"), ("alerts.0.fingerprint", "f\x00")],
    ids=["label-value", "annotation", "receiver", "groupKey", "fingerprint"],
)
def test_a_nul_character_is_rejected_or_stored(receiver, verdict, path, value):
    body = set_path(payload(alert(instance="nul")), path, value)
    either_rejected_naming_or_applied(receiver, verdict, body, path)


def test_a_nul_character_in_a_label_name_is_rejected_or_stored(receiver, verdict):
    body = payload(alert(instance="nul-key"))
    body["alerts"][0]["labels"]["bad\x00name"] = "x"
    either_rejected_naming_or_applied(receiver, verdict, body, "alerts.0.labels.bad\x00name")


@pytest.mark.parametrize("starts_at", ["2026-11-22T03:00:00", "2026-11-22"])
def test_a_timestamp_without_offset_is_rejected_or_handled(receiver, verdict, starts_at):
    firing = payload(alert(instance="naive"))
    firing["alerts"][0]["startsAt"] = starts_at
    resolved = payload(alert("resolved", instance="naive"))
    resolved["alerts"][0]["startsAt"] = starts_at
    for body in (firing, resolved):
        response = post(receiver, dumps(body))
        if response.status_code == 422:
            assert "alerts.0.startsAt" in assert_rejection_names_fields(response)
            return
        assert response.status_code == 202

    def status() -> str | None:
        items = receiver.get("/api/incidents", headers=API_HEADERS).json()["items"]
        return items[0]["status"] if items else None

    wait_for(lambda: verdict.failures() or status() == "resolved", what="the resolution")
    verdict.assert_healthy()


@pytest.mark.parametrize("differ", ["labels", "endsAt"])
def test_a_repeated_fingerprint_is_rejected_or_handled(receiver, verdict, differ):
    first, second = alert(instance="twin-a"), alert(instance="twin-b")
    second["fingerprint"] = first["fingerprint"]
    if differ == "endsAt":
        second["labels"] = first["labels"]
        first["endsAt"], second["endsAt"] = None, "2026-11-22T04:00:00Z"
    either_rejected_naming_or_applied(receiver, verdict, payload(first, second), "alerts.1.fingerprint")


@pytest.mark.parametrize("starts_at", ["9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+05:00"])
def test_a_timestamp_outside_the_representable_range_is_rejected_or_readable(
    receiver, verdict, starts_at
):
    body = payload(alert(instance="far"))
    body["alerts"][0]["startsAt"] = starts_at
    response = post(receiver, dumps(body))
    if response.status_code == 422:
        assert "alerts.0.startsAt" in assert_rejection_names_fields(response)
        return
    assert response.status_code == 202
    verdict.settle({group_of(body)})
    verdict.assert_healthy()
    listing = receiver.get("/api/incidents", headers=API_HEADERS)
    assert listing.status_code == 200, listing.text[:200]


def test_an_acknowledgement_note_with_nul_is_rejected_not_500(receiver, verdict):
    body = payload(alert(instance="note"))
    incident = accepted_and_applied(receiver, verdict, dumps(body), group_of(body))
    response = receiver.post(
        f"/api/incidents/{incident['id']}/acknowledge", content=b'{"note": "a\\u0000b"}',
        headers=API_HEADERS,
    )
    assert response.status_code in {200, 422}, response.status_code
    if response.status_code == 422:
        assert "note" in assert_rejection_names_fields(response)


def test_a_content_length_of_unicode_digits_is_not_a_500(incident_environment):
    app = create_app(get_settings())
    sent: list[dict] = []
    messages = [{"type": "http.request", "body": dumps(payload()), "more_body": False}]

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": URL, "raw_path": URL.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 1), "server": ("testserver", 80),
        "headers": [(b"authorization", f"Bearer {WEBHOOK_TOKEN}".encode()),
                    (b"content-type", b"application/json"), (b"content-length", b"\xb2")],
    }
    try:
        asyncio.run(app(scope, receive, send))
    except ValueError:
        pass
    [status] = [m["status"] for m in sent if m["type"] == "http.response.start"]
    assert status in {202, 400}
