"""Hypothesis against the web console's pages: garbage in the query string, the path or
a form is never a 5xx, and nothing from it reaches the page unescaped."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text

from incident.api.app import create_app
from incident.config import get_settings
from incident.db import engine_for
from tests.conftest import TABLES
from tests.console.conftest import open_incident
from tests.fuzz.conftest import CHARS, NASTY, fuzz_settings

pytestmark = pytest.mark.fuzz
NAMES = ("status", "severity", "q", "page", "fragment", "days", "next")
values = st.one_of(st.text(CHARS, max_size=40), st.sampled_from(NASTY),
                   st.integers(-(10**20), 10**20).map(str))


@pytest.fixture(scope="module")
def console(incident_environment) -> Iterator[TestClient]:
    settings = get_settings().model_copy(update={"dev_mode": True})
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        client.get("/login")
        yield client


@pytest.fixture(scope="module")
def incident_id(console, empty_tables) -> int:
    return open_incident(1, service="<b>fuzz</b>")


@pytest.fixture(scope="module")
def empty_tables(database_url):
    with engine_for(database_url).begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))


def assert_page(response) -> None:
    assert response.status_code < 500, response.text[:500]
    assert "<script>alert(1)</script>" not in response.text


@fuzz_settings(150)
@given(query=st.dictionaries(st.sampled_from(NAMES), values, max_size=4),
       path=st.sampled_from(["/", "/stats"]))
def test_query_strings(console, incident_id, query, path):
    assert_page(console.get(path, params=query))


@fuzz_settings(100)
@given(raw=st.one_of(values, st.text(CHARS, min_size=1, max_size=30)))
def test_incident_paths(console, incident_id, raw):
    assert_page(console.get(f"/incidents/{quote(raw, safe='')}"))


@fuzz_settings(100)
@given(action=st.sampled_from(["acknowledge", "resolve", "silence"]),
       form=st.dictionaries(st.sampled_from(["csrf", "duration", "note"]), values, max_size=3))
def test_forms_without_the_token_are_refused(console, incident_id, action, form):
    response = console.post(f"/incidents/{incident_id}/{action}", data=form)
    assert_page(response)
    assert response.status_code == 403
