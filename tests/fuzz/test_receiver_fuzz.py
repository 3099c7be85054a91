"""Hypothesis against POST /webhooks/alertmanager, in-process, with a real worker behind it.

Four families of input: valid payloads made of hostile strings, valid payloads
with one to three fields broken, arbitrary JSON and bytes, and header
variants. The receiver answers only with the codes INTERFACE names, every
rejection is JSON naming its fields, and whatever it accepts the worker turns
into incident state without a task failing.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import API_TOKEN, WEBHOOK_TOKEN
from tests.factories import alert, payload
from tests.fuzz.conftest import (
    RECEIVER_STATUSES,
    TOP_FIELDS,
    URL,
    alertmanager_payloads,
    assert_error_body,
    broken_payloads,
    assert_rejection_names_fields,
    dumps,
    fuzz_settings,
    group_of,
    json_values,
    post,
)

pytestmark = pytest.mark.fuzz


def test_hostile_valid_payloads_are_accepted_and_become_incidents(receiver, verdict):
    limit = receiver.app.state.settings.max_body_bytes
    firing_by_group: dict[str, bool] = {}

    @fuzz_settings(120)
    @given(body=st.one_of(alertmanager_payloads(), alertmanager_payloads(big=True)))
    def accepted(body: dict) -> None:
        raw = dumps(body)
        response = post(receiver, raw)
        if len(raw) > limit:
            assert response.status_code == 413, response.text[:300]
            assert_error_body(response)
            return
        assert response.status_code == 202, response.text[:1000]
        assert response.json() == {"status": "accepted", "alerts": len(body["alerts"])}
        group = group_of(body)
        fires = any(a["status"] == "firing" for a in body["alerts"])
        firing_by_group[group] = firing_by_group.get(group, False) or fires

    accepted()
    counts = verdict.settle(set(firing_by_group))
    verdict.assert_healthy()
    assert set(counts) == set(firing_by_group), "some accepted payloads were never applied"
    # A group that only ever resolved (or only repeated itself) opens nothing.
    without_incident = [g for g, fired in firing_by_group.items() if fired and not counts[g]]
    assert not without_incident, f"{len(without_incident)} firing groups have no incident"
    _every_incident_reads_back(receiver, expected=sum(counts.values()))


def _every_incident_reads_back(client, *, expected: int) -> None:
    """Hostile strings survive storage: the list and each incident render as JSON."""
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 500, **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/incidents", params=params, headers=headers)
        assert page.status_code == 200, page.text[:500]
        seen += page.json()["items"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == expected
    for item in seen[:20]:
        one = client.get(f"/api/incidents/{item['id']}", headers=headers)
        assert one.status_code == 200, one.text[:500]


# --- broken payloads: each broken field is named, and only those -------------

def test_every_broken_field_is_named_in_the_422(receiver):
    @fuzz_settings(250)
    @given(case=broken_payloads())
    def rejected(case: tuple[dict, list[str]]) -> None:
        body, broken = case
        response = post(receiver, dumps(body))
        named = assert_rejection_names_fields(response)
        for path in broken:
            assert path in named, (path, named)
        for field in named:
            assert any(field == p or field.startswith(p + ".") for p in broken), (field, broken)

    rejected()


# --- arbitrary JSON and bytes --------------------------------------------------

_objects_with_known_keys = st.dictionaries(
    st.one_of(st.sampled_from(sorted(TOP_FIELDS)), st.text(max_size=10)), json_values, max_size=8
)


def test_arbitrary_json_is_rejected_naming_real_fields(receiver):
    @fuzz_settings(200)
    @given(value=st.one_of(json_values, _objects_with_known_keys))
    def rejected(value: Any) -> None:
        response = post(receiver, dumps(value))
        assert response.status_code in RECEIVER_STATUSES, response.text[:300]
        if response.status_code == 202:
            return
        named = assert_rejection_names_fields(response)
        if not isinstance(value, dict):
            assert named == [""]
            return
        # Every name is a field of the payload, never an internal one.
        for field in named:
            assert field.split(".", 1)[0] in TOP_FIELDS, field

    rejected()


def test_arbitrary_bytes_get_400_or_a_named_422(receiver):
    prefixes = st.sampled_from([b"", b"{", b'{"version": "4", ', b"[", b"\xef\xbb\xbf", b"\x00"])

    @fuzz_settings(150)
    @given(prefix=prefixes, noise=st.binary(max_size=512))
    def rejected(prefix: bytes, noise: bytes) -> None:
        response = post(receiver, prefix + noise)
        assert response.status_code in RECEIVER_STATUSES, response.text[:300]
        if response.status_code == 400:
            assert "JSON" in assert_error_body(response)["error"]
        elif response.status_code == 422:
            assert_rejection_names_fields(response)
        else:
            assert response.status_code == 202

    rejected()


# --- headers -------------------------------------------------------------------

CONTENT_TYPES = [
    ("application/json", True), ("application/json; charset=utf-8", True),
    ("APPLICATION/JSON", True), ("application/json ;charset=latin-1", True),
    ("application/vnd.alertmanager+json", True), ("application/problem+JSON; q=1", True),
    ("text/plain", False), ("text/json", False), ("application/jsonp", False),
    ("application/x-www-form-urlencoded", False), ("multipart/form-data; boundary=x", False),
    ("json", False), ("", False), (None, False), ("application/json-seq", False), ("*/*", False),
]
_token = WEBHOOK_TOKEN
AUTHORIZATIONS = [
    (f"Bearer {_token}", True), (f"bearer {_token}", True), (f"BEARER {_token}", True),
    (f"Bearer {_token} ", True), (f"Bearer  {_token}", True),
    (None, False), ("", False), ("Bearer", False), ("Bearer ", False), (f"Bearer {_token}x", False),
    (f"Bearer {_token[:-1]}", False), (f"Bearer\t{_token}", False), (_token, False),
    (f"Token {_token}", False), (f"Basic {base64.b64encode(f'x:{_token}'.encode()).decode()}", False),
    (f"Bearer {_token.upper()}", False), (f"Bearer {_token},{_token}", False),
]
HEADER_NAME_CASES = ["Authorization", "authorization", "AUTHORIZATION"]
_printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)


@st.composite
def header_cases(draw: st.DrawFn, limit: int) -> tuple[dict[str, str], bytes, int]:
    """Headers and a body, with the status the receiver owes them."""
    body, body_status = draw(st.sampled_from([
        (dumps(payload(alert(instance="headers"))), 202),
        (b'{"version": "4"', 400),
        (b"[]", 422),
    ]))
    content_type, type_ok = draw(st.sampled_from(CONTENT_TYPES))
    authorization, auth_ok = draw(st.one_of(
        st.sampled_from(AUTHORIZATIONS),
        _printable.map(lambda junk: (f"Bearer {junk}" if junk != _token else "Bearer -", False)),
    ))
    length = draw(st.sampled_from(
        [None, "exact", "short", "long", "over", "huge", "abc", "-1", "0", " 5"]
    ))
    headers: dict[str, str] = {}
    if authorization is not None:
        headers[draw(st.sampled_from(HEADER_NAME_CASES))] = authorization
    if content_type is not None:
        headers["Content-Type"] = content_type
    declared = {
        "exact": str(len(body)), "short": str(max(len(body) - 3, 0)), "long": str(len(body) + 10),
        "over": str(limit + 1), "huge": "9" * 30,
    }.get(length, length)
    if declared is not None:
        headers["Content-Length"] = declared
    # The order the receiver checks in: credentials, media type, declared size, then the body.
    if not auth_ok:
        expected = 401
    elif not type_ok:
        expected = 415
    elif length in ("over", "huge"):
        expected = 413
    else:
        # In-process the whole body arrives whatever Content-Length says; a real
        # server's handling of the mismatch is tested in test_real_server.
        expected = body_status
    return headers, body, expected


def test_header_variants_get_the_status_they_are_owed(receiver, verdict):
    limit = receiver.app.state.settings.max_body_bytes
    groups: set[str] = set()

    @fuzz_settings(200)
    @given(case=header_cases(limit))
    def answered(case: tuple[dict[str, str], bytes, int]) -> None:
        headers, body, expected = case
        response = receiver.post(URL, content=body, headers=headers)
        assert response.status_code == expected, (headers, response.status_code, response.text[:300])
        if expected == 202:
            groups.add(group_of(payload(alert(instance="headers"))))
            return
        assert_error_body(response)
        if expected == 401:
            assert response.headers["www-authenticate"] == "Bearer"

    answered()
    assert groups, "no header variant was accepted: the generator is broken"
    counts = verdict.settle(groups)
    verdict.assert_healthy()
    assert all(counts[g] == 1 for g in groups)
