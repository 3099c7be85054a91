"""GET /stats: incidents per day, and time to acknowledge and to resolve by severity,
over 7 or 30 days, computed by PostgreSQL from known durations."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from incident.db import session_scope
from incident.incidents import store
from incident.incidents.lifecycle import API
from incident.incidents.models import TimelineKind
from tests.console.conftest import open_incident


def chart_data(html: str) -> dict:
    found = re.search(r'<script type="application/json" id="stats-data">(.*?)</script>', html, re.S)
    assert found, "the page carries no chart data"
    return json.loads(found.group(1))


def by_hand(incident_id: int, to: TimelineKind, at: datetime) -> None:
    with session_scope() as session:
        store.transition_by_hand(session, incident_id, to, API, now=at)


@pytest.fixture
def history() -> dict[str, datetime]:
    """Three SEV2 incidents two days ago acknowledged after 2, 4 and 12 minutes, one of them
    resolved after 30; a SEV4 one yesterday, open; a SEV3 one 20 days ago, resolved after 90."""
    now = datetime.now(UTC).replace(microsecond=0)
    two_days_ago = now - timedelta(days=2)
    for n, minutes in enumerate((2, 4, 12), start=1):
        opened_at = two_days_ago + timedelta(seconds=n)
        incident_id = open_incident(n, at=opened_at, severity="critical")
        by_hand(incident_id, TimelineKind.ACKNOWLEDGED, opened_at + timedelta(minutes=minutes))
        if n == 1:
            by_hand(incident_id, TimelineKind.RESOLVED, opened_at + timedelta(minutes=30))
    open_incident(4, at=now - timedelta(days=1), severity="info")
    old = open_incident(5, at=now - timedelta(days=20), severity="warning")
    by_hand(old, TimelineKind.RESOLVED, now - timedelta(days=20) + timedelta(minutes=90))
    return {"two_days_ago": two_days_ago, "yesterday": now - timedelta(days=1), "now": now}


def test_seven_days(signed_in, history):
    page = signed_in.get("/stats")
    assert page.status_code == 200
    assert 'src="http://testserver/static/vendor/chart.umd.js"' in page.text
    data = chart_data(page.text)

    assert len(data["days"]) == 7 and data["days"][-1] == history["now"].date().isoformat()
    day = data["days"].index(history["two_days_ago"].date().isoformat())
    assert data["per_day"]["SEV2"][day] == 3
    assert data["per_day"]["SEV4"][data["days"].index(history["yesterday"].date().isoformat())] == 1
    assert sum(map(sum, data["per_day"].values())) == 4  # the 20-day-old one is out
    # Minutes, per severity SEV1..SEV4: median and 90th percentile (PostgreSQL's interpolation).
    assert data["acknowledge"] == {"median": [None, 4.0, None, None],
                                   "p90": [None, 10.4, None, None]}
    assert data["resolve"] == {"median": [None, 30.0, None, None], "p90": [None, 30.0, None, None]}


def test_thirty_days(signed_in, history):
    data = chart_data(signed_in.get("/stats?days=30").text)

    assert len(data["days"]) == 30
    assert sum(map(sum, data["per_day"].values())) == 5
    assert data["per_day"]["SEV3"][data["days"].index(
        (history["now"] - timedelta(days=20)).date().isoformat())] == 1
    assert data["resolve"]["median"] == [None, 30.0, 90.0, None]
    assert data["acknowledge"]["median"] == [None, 4.0, None, None]


def test_an_unknown_period_is_seven_days(signed_in):
    for asked in ("abc", "365", "-1", ""):
        answer = signed_in.get("/stats", params={"days": asked})
        assert answer.status_code == 200
        assert len(chart_data(answer.text)["days"]) == 7
