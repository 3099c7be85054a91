"""Time to acknowledge and to resolve: observed once per episode, at the committed transition."""

from __future__ import annotations

from datetime import timedelta

import pytest

from incident import metrics
from incident.alerts.schemas import WebhookPayload
from incident.db import session_scope
from incident.incidents.grouping import apply_webhook
from incident.incidents.lifecycle import API, TransitionNotAllowed
from incident.incidents.models import TimelineKind
from incident.incidents.store import transition_by_hand
from incident.metrics import read_histograms
from incident.rules import load_rules
from tests.factories import T0, alert, payload

RULES = load_rules(None)
ACK = "incident_time_to_acknowledge_seconds"
RESOLVE = "incident_time_to_resolve_seconds"


def webhook(body: dict, at) -> None:
    with session_scope() as session:
        apply_webhook(session, WebhookPayload.model_validate(body), RULES, now=at)


def by_hand(to: TimelineKind, at) -> None:
    with session_scope() as session:
        transition_by_hand(session, 1, to, API, now=at)


def observed(redis_client, name: str, severity: str) -> tuple[int, float]:
    """(count, sum) of one histogram's series, as the fleet has it."""
    metrics.flush()
    series = read_histograms(redis_client)[name].get((severity,))
    if series is None:
        return 0, 0.0
    return int(series.buckets.get("+Inf", 0)), series.sum


def test_each_episode_is_timed_from_its_own_opening_once(clean_state, redis_client):
    sev1 = {"severity": "critical", "env": "prod"}
    webhook(payload(alert(**sev1)), T0)

    by_hand(TimelineKind.ACKNOWLEDGED, T0 + timedelta(minutes=2))
    assert observed(redis_client, ACK, "SEV1") == (1, 120.0)
    # Unacknowledged and acknowledged again: still the first acknowledgement only.
    by_hand(TimelineKind.UNACKNOWLEDGED, T0 + timedelta(minutes=3))
    by_hand(TimelineKind.ACKNOWLEDGED, T0 + timedelta(minutes=4))
    assert observed(redis_client, ACK, "SEV1") == (1, 120.0)
    # The same transition delivered again is refused and observes nothing.
    with pytest.raises(TransitionNotAllowed):
        by_hand(TimelineKind.ACKNOWLEDGED, T0 + timedelta(minutes=5))
    assert observed(redis_client, ACK, "SEV1") == (1, 120.0)

    resolved = payload(alert("resolved", **sev1))
    webhook(resolved, T0 + timedelta(minutes=10))
    assert observed(redis_client, RESOLVE, "SEV1") == (1, 600.0)
    webhook(resolved, T0 + timedelta(minutes=11))  # Alertmanager's re-send
    assert observed(redis_client, RESOLVE, "SEV1") == (1, 600.0)

    # Reopened: the new episode counts from its reopening, not from the first opening.
    reopened_at = T0 + timedelta(minutes=20)
    webhook(payload(alert(starts_at=reopened_at, **sev1)), reopened_at)
    by_hand(TimelineKind.ACKNOWLEDGED, reopened_at + timedelta(seconds=30))
    assert observed(redis_client, ACK, "SEV1") == (2, 150.0)
    by_hand(TimelineKind.RESOLVED, reopened_at + timedelta(seconds=90))
    assert observed(redis_client, RESOLVE, "SEV1") == (2, 690.0)
    assert observed(redis_client, RESOLVE, "SEV3") == (0, 0.0)


def test_a_transition_rolled_back_is_not_observed_and_its_retry_is_once(
    clean_state, redis_client
):
    webhook(payload(alert()), T0)  # SEV3 by the default rules
    with pytest.raises(RuntimeError), session_scope() as session:
        transition_by_hand(session, 1, TimelineKind.RESOLVED, API, now=T0 + timedelta(hours=1))
        raise RuntimeError("the worker died before the commit")
    assert observed(redis_client, RESOLVE, "SEV3") == (0, 0.0)
    by_hand(TimelineKind.RESOLVED, T0 + timedelta(hours=2))
    assert observed(redis_client, RESOLVE, "SEV3") == (1, 7200.0)
