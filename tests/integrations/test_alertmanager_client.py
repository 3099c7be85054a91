"""The silences client against the real Alertmanager binary: made once, found, expired,
across an HA list whose first member is down or answers too late."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from incident.embedded import free_port
from incident.integrations.alertmanager import (
    Alertmanager,
    AlertmanagerRefused,
    AlertmanagerUnavailable,
    SilenceMatcher,
    SilenceRequest,
)
from tests.alertmanager_support import AlertmanagerProcess, SlowProxy

pytestmark = [pytest.mark.alertmanager, pytest.mark.timeout(120)]


def request(**overrides: object) -> SilenceRequest:
    reference = f"ref:{uuid.uuid4().hex}"
    now = datetime.now(UTC)
    fields: dict[str, object] = {
        "matchers": [SilenceMatcher("service", "api"), SilenceMatcher("alertname", "Down")],
        "starts_at": now,
        "ends_at": now + timedelta(hours=1),
        "created_by": "api",
        "comment": f"#42 http://console.test/incidents/42 ({reference})",
        "reference": reference,
    }
    fields.update(overrides)
    return SilenceRequest(**fields)  # type: ignore[arg-type]


def silences_with(url: str, reference: str) -> list[dict]:
    listed = httpx.get(f"{url}/api/v2/silences", timeout=5).json()
    return [s for s in listed if reference in s["comment"] and s["status"]["state"] != "expired"]


def test_a_silence_is_created_found_and_expired(real_alertmanager: AlertmanagerProcess) -> None:
    client = Alertmanager([real_alertmanager.url])
    wanted = request()
    made = client.create(wanted)
    [stored] = silences_with(real_alertmanager.url, wanted.reference)
    assert stored["id"] == made.id
    assert stored["createdBy"] == "api"
    assert {(m["name"], m["value"], m["isRegex"], m["isEqual"]) for m in stored["matchers"]} == {
        ("service", "api", False, True), ("alertname", "Down", False, True),
    }
    assert client.find(wanted.reference) == made.__class__(made.id, "active", wanted.comment, "api")

    client.expire(made.id)
    assert silences_with(real_alertmanager.url, wanted.reference) == []
    client.expire(made.id)  # again: already expired is done, not an error


def test_the_next_url_is_tried_when_the_first_is_down(real_alertmanager: AlertmanagerProcess) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    client = Alertmanager([down, real_alertmanager.url])
    wanted = request()
    made = client.create(wanted)
    assert [s["id"] for s in silences_with(real_alertmanager.url, wanted.reference)] == [made.id]


def test_a_create_that_timed_out_is_looked_for_before_trying_again(
    real_alertmanager: AlertmanagerProcess,
) -> None:
    slow = SlowProxy(real_alertmanager.url, delay=5)
    try:
        client = Alertmanager([slow.url, real_alertmanager.url], timeout=0.5)
        wanted = request()
        made = client.create(wanted)
    finally:
        slow.close()
    assert slow.posts == 1
    # The slow member applied it; the retry found it instead of making a second one.
    assert [s["id"] for s in silences_with(real_alertmanager.url, wanted.reference)] == [made.id]


def test_nothing_answering_is_unavailable_and_names_each_url(tmp_path: Path) -> None:
    urls = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    with pytest.raises(AlertmanagerUnavailable) as caught:
        Alertmanager(urls).create(request())
    assert all(url in str(caught.value) for url in urls)


def test_a_refused_silence_says_why(real_alertmanager: AlertmanagerProcess) -> None:
    now = datetime.now(UTC)
    backwards = request(starts_at=now, ends_at=now - timedelta(hours=1))
    with pytest.raises(AlertmanagerRefused, match="HTTP 400"):
        Alertmanager([real_alertmanager.url]).create(backwards)


def test_credentials_in_a_url_never_reach_the_error(tmp_path: Path) -> None:
    url = f"http://operator:hunter2-secret@127.0.0.1:{free_port()}"
    with pytest.raises(AlertmanagerUnavailable) as caught:
        Alertmanager([url]).create(request())
    assert "hunter2" not in str(caught.value)
    assert "***@127.0.0.1" in str(caught.value)
