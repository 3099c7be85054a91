"""What a silence says in Alertmanager about who asked and what it matches (pure)."""

from __future__ import annotations

import pytest

from incident.incidents.lifecycle import API, PAGERDUTY, SLACK, WEB, Actor
from incident.integrations.alertmanager import SilenceMatcher
from incident.silences.service import (
    NothingToSilence,
    created_by,
    group_matchers,
    matcher_text,
)


@pytest.mark.parametrize(("actor", "expected"), [
    (Actor(SLACK, "U024BE7LH", "alice"), "slack:U024BE7LH (alice)"),
    (Actor(WEB, "alice@example.com", "alice@example.com"), "web:alice@example.com"),
    (Actor(PAGERDUTY, "PABC123", "Alice Example"), "pagerduty:PABC123 (Alice Example)"),
    (API, "api"),
])
def test_created_by_names_the_actor(actor, expected):
    assert created_by(actor) == expected


def test_each_group_label_is_an_equality_matcher_in_alertmanagers_syntax():
    matchers = group_matchers({"service": "api", "alertname": 'Say "hi"\\'})
    assert matchers == [SilenceMatcher("alertname", 'Say "hi"\\'), SilenceMatcher("service", "api")]
    assert [matcher_text(m) for m in matchers] == ['alertname="Say \\"hi\\"\\\\"', 'service="api"']
    assert matcher_text(SilenceMatcher("service.name", "api")) == '"service.name"="api"'


@pytest.mark.parametrize("group_labels", [{}, {"service": ""}])
def test_a_group_with_nothing_to_match_is_not_silenced(group_labels):
    with pytest.raises(NothingToSilence, match="every alert"):
        group_matchers(group_labels)
