"""GET /: open incidents first, filters kept in the query string, counts per severity,
50 a page, and the list fragment the page refreshes itself with."""

from __future__ import annotations

import re

from incident.db import session_scope
from incident.incidents import store
from incident.incidents.lifecycle import API
from incident.incidents.models import TimelineKind
from tests.console.conftest import open_incident


def shown_ids(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'class="incident-row[^"]*" data-id="(\d+)"', html)]


def count_of(html: str, severity: str) -> int:
    return int(re.search(rf'data-severity="{severity}">(\d+)<', html).group(1))


def resolve(incident_id: int) -> None:
    with session_scope() as session:
        store.transition_by_hand(session, incident_id, TimelineKind.RESOLVED, API)


def test_open_incidents_come_first_newest_first(signed_in):
    first = open_incident(1, service="api")
    second = open_incident(2, service="db")
    third = open_incident(3, service="web")
    resolve(third)

    page = signed_in.get("/")

    assert page.status_code == 200
    assert shown_ids(page.text) == [second, first, third]
    assert "Down 2" in page.text


def test_filters_by_status_severity_and_text_and_counts_per_severity(signed_in):
    critical = open_incident(1, severity="critical", service="payments")
    warning = open_incident(2, severity="warning", service="api")
    info = open_incident(3, severity="info", service="api")
    resolve(info)

    everything = signed_in.get("/").text
    assert [count_of(everything, s) for s in ("SEV1", "SEV2", "SEV3", "SEV4")] == [0, 1, 1, 1]

    assert shown_ids(signed_in.get("/?status=triggered").text) == [warning, critical]
    assert shown_ids(signed_in.get("/?severity=SEV2").text) == [critical]
    # Text matches the title or any label, whatever its case.
    by_label = signed_in.get("/?q=PAYMENTS").text
    assert shown_ids(by_label) == [critical]
    assert [count_of(by_label, s) for s in ("SEV1", "SEV2", "SEV3", "SEV4")] == [0, 1, 0, 0]
    assert shown_ids(signed_in.get("/?q=Down 3").text) == [info]
    # LIKE's wildcards are text like any other.
    assert shown_ids(signed_in.get("/?q=%25").text) == []

    combined = signed_in.get("/?status=triggered&q=api").text
    assert shown_ids(combined) == [warning]
    # The filters stay in the page's links and in its refresh.
    assert 'value="api"' in combined
    assert "fragment=list" in combined and "status=triggered" in combined


def test_fifty_a_page_with_next_and_previous(signed_in):
    opened = [open_incident(n) for n in range(1, 56)]

    first = signed_in.get("/").text
    assert shown_ids(first) == opened[::-1][:50]
    assert 'rel="next" href="/?page=2"' in first and 'rel="prev"' not in first

    second = signed_in.get("/?page=2").text
    assert shown_ids(second) == opened[::-1][50:]
    assert 'rel="prev"' in second and 'rel="next"' not in second
    assert count_of(second, "SEV3") == 55


def test_the_fragment_is_the_list_alone_and_shows_a_new_incident(signed_in):
    open_incident(1)
    before = signed_in.get("/?fragment=list")
    assert before.status_code == 200
    assert "<html" not in before.text and 'class="filters"' not in before.text
    assert len(shown_ids(before.text)) == 1

    newer = open_incident(2)

    after = signed_in.get("/?fragment=list").text
    assert shown_ids(after)[0] == newer


def test_garbage_in_the_query_string_is_ignored(signed_in):
    open_incident(1)
    for query in ("page=-3", "page=abc", "page=99999999999999999999", "status=nope",
                  "severity=SEV9", "q=" + "x" * 5000, "q=%00", "fragment=other"):
        answer = signed_in.get("/?" + query)
        assert answer.status_code == 200, query
