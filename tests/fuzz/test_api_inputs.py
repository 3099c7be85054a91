"""Hypothesis against /api/*: query strings, path ids, acknowledge/resolve bodies and
maintenance windows.

Never a 5xx; every rejection is JSON and names what was wrong. The incidents
are made in-process (no worker needed: nothing here waits for a delivery).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import orjson
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text

from incident.db import engine_for
from incident.incidents.ingest import ingest_payload
from incident.worker.tasks import context
from tests.conftest import API_TOKEN, TABLES
from tests.factories import alert, payload
from tests.fuzz.conftest import (
    CHARS,
    assert_rejection_names_fields,
    fuzz_settings,
    json_values,
    rfc3339,
)

pytestmark = pytest.mark.fuzz
HEADERS = {"Authorization": f"Bearer {API_TOKEN}"}
QUERY_NAMES = ("status", "severity", "limit", "cursor")


@pytest.fixture(scope="module")
def incident_ids(receiver, database_url: str, redis_url: str) -> list[int]:
    with engine_for(database_url).begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    # The repeat cache too, or a re-run would find these webhooks already applied.
    redis.Redis.from_url(redis_url).flushdb()
    return [apply_webhook(payload(alert(instance=f"api-{n}"), group_labels={"n": str(n)}))
            for n in range(3)]


def apply_webhook(raw: dict) -> int | None:
    """One webhook applied in-process, as a worker applies it."""
    ctx = context()
    change = ingest_payload(raw, rules=ctx.rules, repeats=ctx.repeats, events=ctx.events)
    return change.incident_id if change else None


query_values = st.one_of(
    st.text(CHARS, max_size=30), st.integers(-(10**20), 10**20).map(str),
    st.sampled_from(["", "0", "1", "500", "501", "-1", "1e2", "SEV1", "sev1", "triggered",
                     "TRIGGERED", "aWQ6MQ", "aWQ6LTE", "aWQ6eA", "=" * 10, "%00", "x" * 201]),
)


@st.composite
def queries(draw: st.DrawFn) -> dict[str, str]:
    names = draw(st.lists(st.sampled_from(QUERY_NAMES), unique=True, max_size=4))
    return {name: draw(query_values) for name in names}


def test_incident_list_queries_answer_200_or_a_422_naming_the_parameter(receiver, incident_ids):
    @fuzz_settings(200)
    @given(params=queries())
    def answered(params: dict[str, str]) -> None:
        response = receiver.get("/api/incidents", params=params, headers=HEADERS)
        assert response.status_code in {200, 422}, (params, response.status_code, response.text[:300])
        if response.status_code == 200:
            page = response.json()
            assert set(page) == {"items", "next_cursor"}
            return
        # Which parameter the rejection names.
        assert any(name in response.text for name in params), (params, response.text[:300])

    answered()


@pytest.mark.parametrize(
    "url", ["/api/incidents?limit=0", "/api/incidents?severity=SEV9", "/api/incidents/abc",
            "/api/incidents/0/acknowledge"],
)
def test_every_api_422_has_the_documented_error_shape(receiver, incident_ids, url):
    method = receiver.post if url.endswith("acknowledge") else receiver.get
    assert_rejection_names_fields(method(url, headers=HEADERS))


ids = st.one_of(
    st.integers(-(2**64), 2**64).map(str), st.text(CHARS, min_size=1, max_size=20),
    st.sampled_from(["1", "2", "3", "0", "01", "1.0", "9223372036854775807", "9223372036854775808"]),
)


def test_incident_detail_ids_answer_200_404_or_422(receiver, incident_ids):
    @fuzz_settings(150)
    @given(raw_id=ids)
    def answered(raw_id: str) -> None:
        response = receiver.get(f"/api/incidents/{quote(raw_id, safe='')}", headers=HEADERS)
        assert response.status_code in {200, 404, 405, 422}, (raw_id, response.text[:300])
        assert response.headers["content-type"].startswith("application/json")

    answered()


transition_bodies = st.one_of(
    st.just(b""), st.just(b"{}"), st.just(b"   "),
    st.fixed_dictionaries({}, optional={"note": st.one_of(st.text(CHARS, max_size=200), st.none())}),
    st.dictionaries(st.text(max_size=8), json_values, max_size=3),
    json_values, st.binary(max_size=64),
)


def test_acknowledge_and_resolve_bodies_never_get_a_server_error(receiver, incident_ids):
    allowed = {200, 400, 404, 409, 422}

    @fuzz_settings(200)
    @given(
        verb=st.sampled_from(["acknowledge", "resolve"]),
        target=st.sampled_from([*incident_ids, 10**6]),
        body=transition_bodies,
    )
    def answered(verb: str, target: int, body: Any) -> None:
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        response = receiver.post(f"/api/incidents/{target}/{verb}", content=raw, headers=HEADERS)
        assert response.status_code in allowed, (verb, raw[:200], response.status_code, response.text[:300])
        if response.status_code == 200:
            assert response.json()["id"] == target
            return
        assert response.json()["error"]
        if response.status_code == 422:
            named = assert_rejection_names_fields(response)
            if isinstance(body, dict):
                assert set(named) <= set(body) | {"note"}, (named, body)

    answered()


# --- maintenance windows ---------------------------------------------------------

WINDOW_FIELDS = {"matchers", "starts_at", "ends_at", "comment"}
near_now = st.integers(-3600, 40 * 86400).map(
    lambda seconds: (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()
)
matcher_texts = st.one_of(
    st.builds(
        lambda name, op, value: f'{name}{op}"{value}"',
        st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,8}", fullmatch=True),
        st.sampled_from(["=", "!=", "=~", "!~"]),
        st.text(CHARS, max_size=20),
    ),
    st.text(CHARS, max_size=40),
    st.sampled_from(['a=~"("', 'a=~"\\\\"', "a=", '="x"', 'a!~".*"', 'a="\\"', "{a=\"b\"}"]),
)
window_bodies = st.one_of(
    st.fixed_dictionaries({}, optional={
        "matchers": st.one_of(st.lists(matcher_texts, max_size=4), json_values),
        "starts_at": st.one_of(near_now, rfc3339(), json_values),
        "ends_at": st.one_of(near_now, rfc3339(), json_values),
        "comment": st.one_of(st.text(CHARS, max_size=50), json_values),
    }),
    st.dictionaries(st.text(max_size=8), json_values, max_size=3),
    json_values, st.binary(max_size=64),
)


def test_maintenance_window_bodies_never_get_a_server_error(receiver, incident_ids):
    @fuzz_settings(300)
    @given(body=window_bodies)
    def answered(body: Any) -> None:
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        response = receiver.post("/api/maintenance", content=raw,
                                 headers={**HEADERS, "Content-Type": "application/json"})
        assert response.status_code in {201, 400, 422}, (raw[:200], response.status_code, response.text[:300])
        assert response.json()
        if response.status_code == 400:  # not UTF-8: not JSON at all
            assert response.json()["error"]
            return
        if response.status_code == 201:
            window = response.json()
            assert window["matchers"] and window["active"] in (True, False)
            return
        named = assert_rejection_names_fields(response)
        if isinstance(body, dict):
            known = {f"body.{name}" for name in set(body) | WINDOW_FIELDS}
            assert all(any(field == k or field.startswith(f"{k}.") for k in known)
                       for field in named) or named == ["body"], (named, body)

    answered()


def test_ending_maintenance_windows_by_any_id_never_gets_a_server_error(receiver, incident_ids):
    @fuzz_settings(150)
    @given(raw_id=ids)
    def answered(raw_id: str) -> None:
        response = receiver.delete(f"/api/maintenance/{quote(raw_id, safe='')}", headers=HEADERS)
        assert response.status_code in {200, 404, 405, 409, 422}, (raw_id, response.text[:300])
        assert response.headers["content-type"].startswith("application/json")

    answered()
