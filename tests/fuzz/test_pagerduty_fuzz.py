"""Hypothesis against POST /webhooks/pagerduty and the worker's side of it.

Bodies are signed with the secret, so generated input gets past the signature
to the parser: never a 5xx, every rejection JSON naming what was wrong, and
whatever passes is something the worker applies without raising.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from incident.api.app import create_app
from incident.config import Settings, get_settings
from incident.db import session_scope
from incident.incidents.models import Incident
from incident.notifications.pagerduty_events import SUBSCRIBED, Outcome, Webhook, apply_event
from incident.queues import PAGE
from tests.fakes.pagerduty import (
    WEBHOOK_SECRET,
    incident_data,
    note_data,
    signed_headers,
    webhook,
)
from tests.fuzz.conftest import (
    adversarial_text,
    assert_error_body,
    assert_rejection_names_fields,
    fuzz_settings,
    json_values,
)
from tests.fuzz.test_api_inputs import apply_webhook
from tests.factories import alert, payload

pytestmark = pytest.mark.fuzz
ROUTE = "/webhooks/pagerduty"
EVENT_TYPES = [*SUBSCRIBED, "pagey.ping", "incident.priority_updated", "service.updated", ""]


@pytest.fixture(scope="module")
def pagerduty_receiver(incident_environment: dict[str, str]) -> Iterator[TestClient]:
    settings = Settings.model_validate(
        {**get_settings().model_dump(), "pagerduty_webhook_secret": WEBHOOK_SECRET}
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def our_key(clean_state, redis_client) -> Iterator[str]:
    incident_id = apply_webhook(payload(alert(instance="pd-fuzz")))
    with session_scope() as session:
        key = session.get(Incident, incident_id).key
    yield key
    redis_client.delete(PAGE)  # no worker here: drop what was queued


texts = adversarial_text(max_size=30)
references = st.one_of(
    st.none(), json_values,
    st.fixed_dictionaries({}, optional={"id": st.one_of(texts, json_values),
                                        "summary": st.one_of(texts, json_values),
                                        "type": texts}),
)


@st.composite
def v3_events(draw: st.DrawFn, key: str) -> dict[str, Any]:
    """Near-valid V3 webhooks: the real shape with fields dropped, retyped or odd."""
    event_type = draw(st.sampled_from(EVENT_TYPES))
    data = draw(st.one_of(
        st.just(incident_data(draw(st.sampled_from([key, "unknown", ""])),
                              pagerduty_id=draw(st.one_of(texts, st.just("P" * 255))))),
        st.just(note_data(draw(texts), pagerduty_id=draw(st.sampled_from(["PINC001", "P"])))),
        st.dictionaries(st.sampled_from(["incident_key", "id", "type", "incident", "content",
                                         "assignees", "escalation_policy"]),
                        st.one_of(texts, json_values, references), max_size=5),
        json_values,
    ))
    body = webhook(event_type, data, event_id=draw(st.one_of(texts, st.uuids().map(str))))
    event = body["event"]
    for name in draw(st.lists(st.sampled_from(sorted(event)), max_size=2, unique=True)):
        if draw(st.booleans()):
            del event[name]
        else:
            event[name] = draw(st.one_of(json_values, references))
    if draw(st.booleans()):
        event["agent"] = draw(references)
    return body


bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(orjson.dumps),
    st.dictionaries(st.text(max_size=8), json_values, max_size=3).map(
        lambda d: orjson.dumps({"event": d})),
)


def test_signed_garbage_is_never_a_server_error(pagerduty_receiver, our_key):
    @fuzz_settings(200)
    @given(body=st.one_of(bodies, v3_events(our_key).map(orjson.dumps)))
    def answered(body: bytes) -> None:
        response = pagerduty_receiver.post(ROUTE, content=body, headers=signed_headers(body))
        assert response.status_code in {200, 202, 400, 422}, (body[:300], response.text[:300])
        if response.status_code == 422:
            assert_rejection_names_fields(response)
        elif response.status_code == 400:
            assert_error_body(response)
        else:
            assert response.json()["status"] in {"accepted", "ignored"}

    answered()


def test_whatever_the_receiver_takes_the_worker_applies_without_raising(our_key):
    @fuzz_settings(150)
    @given(body=v3_events(our_key))
    def applied(body: dict) -> None:
        try:
            event = Webhook.model_validate(body).event
        except ValueError:
            return  # refused at the door (422): never queued
        # What the receiver queues, as the task gets it.
        outcome = apply_event(event.model_dump(mode="json", exclude_none=True))
        assert outcome in set(Outcome)

    applied()


def test_unsigned_or_badly_signed_garbage_is_401(pagerduty_receiver):
    @fuzz_settings(100)
    @given(body=bodies, header=st.one_of(texts, st.lists(texts, max_size=3).map(",".join)))
    def refused(body: bytes, header: str) -> None:
        # As raw bytes, less what no HTTP header can carry.
        value = header.encode().translate(None, b"\r\n\x00")
        headers = {"Content-Type": "application/json", "X-PagerDuty-Signature": value}
        response = pagerduty_receiver.post(ROUTE, content=body, headers=headers)
        assert response.status_code == 401, response.text[:300]
        assert_error_body(response)

    refused()
