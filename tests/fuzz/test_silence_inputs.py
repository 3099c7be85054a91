"""Hypothesis against POST and DELETE /api/incidents/{id}/silence, with the real Alertmanager
behind the app: garbage is refused by name, never a server error, and every silence made
is one Alertmanager took."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from incident.api.app import create_app
from incident.config import get_settings
from tests.fuzz.conftest import (
    adversarial_text,
    assert_rejection_names_fields,
    fuzz_settings,
    json_values,
)
from tests.silences.conftest import HEADERS, open_incident

pytestmark = [pytest.mark.fuzz, pytest.mark.alertmanager, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def silencing_receiver(incident_environment, real_alertmanager) -> Iterator[TestClient]:
    settings = get_settings().model_copy(update={"alertmanager_url": real_alertmanager.url})
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


durations = st.one_of(
    st.sampled_from(["1m", "59s", "1h", "4h", "24h", "7d", "7d1s", "8d", "1h30m", "0s", "-1h",
                     "1H", " 1h", "1w", "10000000000000000000000d", "1e3s", "٣h"]),
    adversarial_text(max_size=12), st.integers(-10, 10**6), st.none(),
)
silence_bodies = st.one_of(
    st.just(b""), st.just(b"{}"), st.just(b"   "),
    st.fixed_dictionaries({}, optional={"duration": durations,
                                        "comment": st.one_of(adversarial_text(max_size=300),
                                                             st.none())}),
    st.dictionaries(st.text(max_size=8), json_values, max_size=3),
    json_values, st.binary(max_size=64),
)


def test_silence_bodies_never_get_a_server_error(clean_state, silencing_receiver):
    incident_ids = [open_incident()[0] for _ in range(2)]

    @fuzz_settings(120)
    @given(target=st.sampled_from([*incident_ids, 10**6]), body=silence_bodies)
    def answered(target: int, body: Any) -> None:
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        response = silencing_receiver.post(
            f"/api/incidents/{target}/silence", content=raw, headers=HEADERS
        )
        assert response.status_code in {200, 400, 404, 422}, (
            raw[:200], response.status_code, response.text[:300]
        )
        assert response.json()["error" if response.status_code != 200 else "silences"]
        if response.status_code == 422:
            named = assert_rejection_names_fields(response)
            if isinstance(body, dict):
                assert set(named) <= set(body) | {"duration", "comment"}, (named, body)

    answered()


def test_unsilencing_any_id_never_gets_a_server_error(clean_state, silencing_receiver):
    incident_id, _ = open_incident()
    silencing_receiver.post(f"/api/incidents/{incident_id}/silence", headers=HEADERS)

    @fuzz_settings(60)
    @given(raw_id=st.one_of(st.sampled_from([str(incident_id), "0", "-1", "9223372036854775808"]),
                            st.integers(-(2**64), 2**64).map(str)))
    def answered(raw_id: str) -> None:
        response = silencing_receiver.delete(f"/api/incidents/{raw_id}/silence", headers=HEADERS)
        assert response.status_code in {200, 404, 422}, (raw_id, response.text[:300])
        assert response.headers["content-type"].startswith("application/json")

    answered()
