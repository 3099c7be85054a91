"""Hypothesis against POST /slack/interactions with a signing secret: whatever is
signed, garbage or a hostile block_actions payload, is answered 200, 400, 413 or
422 with a JSON error naming the field; whatever is not signed, 401. Never a 5xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
import redis
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from incident import keys
from incident.api.app import create_app
from incident.config import Settings
from tests.fuzz.conftest import CHARS, NASTY, fuzz_settings, json_values
from tests.slack.conftest import signed

pytestmark = pytest.mark.fuzz
SECRET = "fuzz-signing-secret"
ROUTE = "/slack/interactions"


@pytest.fixture(scope="module")
def slack_receiver(incident_environment: dict[str, str]) -> Iterator[TestClient]:
    app = create_app(Settings(slack_signing_secret=SECRET))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


hostile = st.one_of(st.text(CHARS, max_size=30), st.sampled_from(NASTY), json_values)
action_ids = st.one_of(
    st.sampled_from(["incident.acknowledge", "incident.resolve", "incident.silence"]), hostile,
)
values = st.one_of(
    st.sampled_from(["1", "0", "-1", "01", "9223372036854775807", "9223372036854775808",
                     "1:1h", "1:4h", "1:24h", "1:2h", ":1h", "1:", "x:1h", "1e3", " 1"]),
    hostile,
)


@st.composite
def click_payloads(draw: st.DrawFn) -> dict[str, Any]:
    action = draw(st.fixed_dictionaries(
        {"action_id": action_ids},
        optional={"value": values, "selected_option": st.one_of(
            st.fixed_dictionaries({"value": values}), hostile)},
    ))
    payload = draw(st.fixed_dictionaries(
        {"type": st.one_of(st.just("block_actions"), hostile)},
        optional={
            "user": st.one_of(st.fixed_dictionaries(
                {"id": st.one_of(st.just("U024BE7LH"), hostile)},
                optional={"username": hostile, "name": hostile}), hostile),
            "response_url": st.one_of(st.just("https://hooks.slack.com/actions/T/1/x"), hostile),
            "actions": st.one_of(st.lists(st.just(action), max_size=3), hostile),
        },
    ))
    return payload


def freshly_signed(body: bytes, redis_client: redis.Redis) -> dict[str, str]:
    """Signed now, and never seen: hypothesis repeats examples while it shrinks, and
    the same body signed in the same second is a replay, refused."""
    headers = signed(body, secret=SECRET)
    redis_client.delete(keys.SLACK_SEEN_SIGNATURE + headers["X-Slack-Signature"])
    return headers


def post(client: TestClient, body: bytes, headers: dict[str, str]):
    return client.post(ROUTE, content=body, headers=headers)


def check_error(response) -> None:
    assert response.headers["content-type"].startswith("application/json"), response.text[:200]
    answer = response.json()
    assert isinstance(answer.get("error"), str) and answer["error"]
    if response.status_code == 422:
        assert answer["fields"] and all(f["field"].startswith("payload") for f in answer["fields"])


def test_signed_payloads_never_get_a_server_error(slack_receiver, redis_client):
    @fuzz_settings(200)
    @given(payload=st.one_of(click_payloads(), json_values))
    def answered(payload: Any) -> None:
        body = urlencode({"payload": json.dumps(payload)}).encode()
        response = post(slack_receiver, body, freshly_signed(body, redis_client))
        assert response.status_code in {200, 400, 422}, (payload, response.text[:300])
        if response.status_code != 200:
            check_error(response)

    answered()


def test_signed_bytes_never_get_a_server_error(slack_receiver, redis_client):
    @fuzz_settings(150)
    # Slack signs UTF-8 text (slack_sdk cannot sign anything else).
    @given(body=st.one_of(
        st.text(CHARS, max_size=200).map(str.encode),
        st.lists(st.sampled_from(["payload", "=", "&", "%", "%7B", "%FF", "+", "{", "}", "x"]),
                 max_size=40).map(lambda parts: "".join(parts).encode()),
    ))
    def answered(body: bytes) -> None:
        response = post(slack_receiver, body, freshly_signed(body, redis_client))
        assert response.status_code in {400, 422}, (body, response.text[:300])
        check_error(response)

    answered()


def test_unsigned_or_badly_signed_input_is_always_401(slack_receiver):
    @fuzz_settings(150)
    @given(body=st.binary(max_size=200),
           timestamp=st.one_of(st.none(), st.text(CHARS, max_size=12),
                               st.integers(-(10**20), 10**20).map(str)),
           signature=st.one_of(st.none(), st.text(CHARS, max_size=80),
                               st.just("v0=" + "0" * 64)))
    def refused(body: bytes, timestamp: str | None, signature: str | None) -> None:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if timestamp is not None:
            headers["X-Slack-Request-Timestamp"] = timestamp
        if signature is not None:
            headers["X-Slack-Signature"] = signature
        try:
            response = post(slack_receiver, body, headers)
        except UnicodeEncodeError:
            return  # a header httpx cannot send is not a request that reaches us
        assert response.status_code == 401, response.text[:300]
        check_error(response)

    refused()
