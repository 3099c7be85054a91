"""The fast path: a notification already applied never reaches PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import event

from incident.db import get_engine
from incident.incidents.ingest import ingest_payload
from incident.incidents.repeats import RepeatCache
from incident.rules import load_rules
from tests.factories import alert, payload

RULES = load_rules(None)
pytestmark = pytest.mark.usefixtures("clean_state")


@contextmanager
def statements() -> Iterator[list[str]]:
    seen: list[str] = []

    def record(conn, cursor, statement, *args) -> None:
        seen.append(statement.split(None, 1)[0].upper())

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_an_unchanged_resend_sends_no_statement_to_postgres(redis_client):
    repeats = RepeatCache(redis_client)
    body = payload(alert(severity="critical"))
    with statements() as first:
        change = ingest_payload(body, rules=RULES, repeats=repeats)
    assert change.incident_id is not None
    assert "INSERT" in first

    with statements() as resend:
        assert ingest_payload(body, rules=RULES, repeats=repeats) is None
    assert resend == []


def test_without_the_cache_a_resend_is_still_recognised_and_writes_nothing(redis_client):
    repeats = RepeatCache(redis_client)
    body = payload(alert(severity="critical"))
    ingest_payload(body, rules=RULES, repeats=repeats)
    redis_client.flushdb()

    with statements() as resend:
        change = ingest_payload(body, rules=RULES, repeats=repeats)
    assert change.duplicate
    assert not {"INSERT", "UPDATE", "DELETE"} & set(resend)
    # ... and the cache learned it again.
    with statements() as third:
        assert ingest_payload(body, rules=RULES, repeats=repeats) is None
    assert third == []


def test_a_changed_notification_goes_to_postgres(redis_client):
    repeats = RepeatCache(redis_client)
    ingest_payload(payload(alert(instance="a")), rules=RULES, repeats=repeats)
    change = ingest_payload(
        payload(alert(instance="a"), alert(instance="b")), rules=RULES, repeats=repeats
    )
    assert change is not None and not change.duplicate
    assert [e.value for e in change.events] == ["alert_added"]


def test_an_older_revision_never_overwrites_a_newer_digest(redis_client):
    repeats = RepeatCache(redis_client)
    repeats.remember("g", 5, "newer")
    repeats.remember("g", 4, "older")
    assert repeats.is_current("g", "newer")
    assert not repeats.is_current("g", "older")
