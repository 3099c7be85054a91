"""Three Alertmanager replicas delivering the same notifications concurrently:
one incident, one page.

The replicas run standalone (clustering off), the harsher case: a cluster
gossips its notification log so that peers usually skip what one has sent,
while standalone replicas each deliver every notification, and every repeat,
on their own timer. The same alerts are posted to all three at once, so their
first deliveries arrive within milliseconds of each other and are worked on
by different worker processes at the same moment.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ApiProcess, wait_for
from tests.notifications.support import all_incidents, drained, ledger
from tests.test_alertmanager import NOTIFY_FAILED, AlertmanagerProcess, prometheus_alert

pytestmark = [pytest.mark.faults, pytest.mark.alertmanager, pytest.mark.timeout(240)]

CHANNEL = "incidents"
REPLICAS = 3
SERVICES = ("api", "db")
WAIT = 60.0
RULES = """
escalation:
  SEV1: {pagerduty: critical, slack: true}
"""
NOTIFY_SUCCESS = re.compile(r'msg="Notify success"')


@pytest.fixture(scope="module")
def alertmanager_binary() -> str:
    import shutil

    found = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if not found:
        pytest.fail(
            "the Alertmanager binary (prometheus-alertmanager) is not installed; run `make test`",
            pytrace=False,
        )
    return found


@pytest.fixture
def replicas(
    alertmanager_binary: str, api: ApiProcess, workers, clean_state: None, tmp_path: Path
) -> Iterator[list[AlertmanagerProcess]]:
    started: list[AlertmanagerProcess] = []
    try:
        for n in range(REPLICAS):
            workdir = tmp_path / f"am{n}"
            workdir.mkdir()
            started.append(
                AlertmanagerProcess(
                    alertmanager_binary, workdir, f"{api.url}/webhooks/alertmanager"
                )
            )
        for replica in started:
            replica.wait_ready()
        yield started
        for replica in started:
            assert NOTIFY_FAILED not in replica.log(), replica.problems()
    finally:
        for replica in started:
            replica.stop()


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def post_to_all(replicas: list[AlertmanagerProcess], alerts: list[dict[str, Any]]) -> None:
    """The same alerts to every replica at the same moment, as Prometheus does."""
    errors: list[BaseException] = []
    start = threading.Barrier(len(replicas), timeout=10)

    def send(replica: AlertmanagerProcess) -> None:
        try:
            start.wait()
            replica.post_alerts(*alerts)
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(replica,)) for replica in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert not errors, errors


def deliveries(replica: AlertmanagerProcess) -> int:
    """Webhooks this replica delivered and the receiver accepted (2xx)."""
    return len(NOTIFY_SUCCESS.findall(replica.log()))


def wait_for_deliveries(replicas, at_least: list[int], what: str) -> None:
    def delivered() -> bool:
        return all(deliveries(r) >= n for r, n in zip(replicas, at_least, strict=True))

    try:
        wait_for(delivered, timeout=WAIT, interval=0.2, what=what)
    except AssertionError as exc:
        problems = "\n".join(r.problems() for r in replicas)
        raise AssertionError(f"{exc}: {[deliveries(r) for r in replicas]}\n{problems}") from None


def settled_ledger(redis_client, rows: int) -> list[dict[str, Any]]:
    def done():
        found = ledger()
        if len(found) < rows or any(r["status"] in ("pending", "sending", "digested") for r in found):
            return None
        return found

    found = wait_for(done, timeout=WAIT, interval=0.2, what=f"{rows} notifications settled")
    wait_for(lambda: drained(redis_client), timeout=WAIT, interval=0.2, what="queues drained")
    return found


def test_three_replicas_sending_the_same_groups_make_one_incident_and_one_page_each(
    replicas, api, fake_slack, fake_pagerduty, redis_client
):
    events_before = len(fake_pagerduty.events)
    messages_before = {m.ts for m in fake_slack.messages}
    now = datetime.now(UTC)
    firing = [
        prometheus_alert(
            service=service, instance=instance, severity="critical", env="prod",
            starts_at=now - timedelta(minutes=1), ends_at=now + timedelta(minutes=10),
        )
        for service in SERVICES
        for instance in ("a", "b")
    ]
    post_to_all(replicas, firing)

    # Each replica delivers each group, then repeats it every repeat_interval
    # (4 s): wait for every replica's first delivery and one repeat of both groups.
    wait_for_deliveries(replicas, [2 * len(SERVICES)] * REPLICAS, "every replica delivering twice")
    rows = settled_ledger(redis_client, 2 * len(SERVICES))

    incidents = sorted(all_incidents(api), key=lambda i: i["title"])
    assert [(i["title"], i["severity"], i["status"]) for i in incidents] == [
        (f"HighErrorRate {service}", "SEV1", "triggered") for service in SERVICES
    ]
    for shown in incidents:
        assert sorted(a["labels"]["instance"] for a in shown["alerts"]) == ["a", "b"]
        kinds = [e["kind"] for e in shown["timeline"]]
        # Both alerts come in the group's first notification, unless a replica
        # flushed between the two; never a second opening.
        assert kinds in (["opened"], ["opened", "alert_added"]), kinds
    keys = {i["key"] for i in incidents}

    # The fake PagerDuty keeps every event it accepts, duplicates of one
    # dedup_key included (the real one would fold them into one alert), so
    # counting events is stricter than counting pages: one trigger each.
    events = fake_pagerduty.events[events_before:]
    assert Counter((e["dedup_key"], e["event_action"]) for e in events) == {
        (key, "trigger"): 1 for key in keys
    }
    parents = [
        m for m in fake_slack.parents(CHANNEL) if m.ts not in messages_before
    ]
    assert sorted(m.metadata["event_payload"]["incident_id"] for m in parents) == sorted(
        i["id"] for i in incidents
    ), "one Slack parent per incident"
    # An alert added after the opening is told in the Slack thread (an update).
    added = {i["id"]: [e["kind"] for e in i["timeline"]].count("alert_added") for i in incidents}
    assert Counter((r["incident_id"], r["channel"], r["action"]) for r in rows) == {
        **{(i["id"], channel, "trigger"): 1 for i in incidents for channel in ("slack", "pagerduty")},
        **{(incident_id, "slack", "update"): n for incident_id, n in added.items() if n},
    }
    assert {r["status"] for r in rows} == {"sent"}

    # Resolution, again from all three: one resolve each, whoever delivers first.
    delivered = [deliveries(r) for r in replicas]
    resolved_at = datetime.now(UTC)
    post_to_all(replicas, [{**alert, "endsAt": _iso(resolved_at)} for alert in firing])
    wait_for_deliveries(
        replicas, [n + len(SERVICES) for n in delivered], "every replica delivering the resolution"
    )
    rows = settled_ledger(redis_client, 4 * len(SERVICES))

    incidents = sorted(all_incidents(api), key=lambda i: i["title"])
    assert [i["status"] for i in incidents] == ["resolved"] * len(SERVICES)
    for shown in incidents:
        kinds = [e["kind"] for e in shown["timeline"]]
        assert kinds.count("resolved") == 1, kinds
        assert "reopened" not in kinds, kinds
    events = fake_pagerduty.events[events_before:]
    assert Counter((e["dedup_key"], e["event_action"]) for e in events) == {
        **{(key, "trigger"): 1 for key in keys},
        **{(key, "resolve"): 1 for key in keys},
    }
    assert Counter((r["incident_id"], r["channel"], r["action"]) for r in rows) == {
        (i["id"], channel, action): 1
        for i in incidents
        for channel in ("slack", "pagerduty")
        for action in ("trigger", "resolve")
    }
    assert {r["status"] for r in rows} == {"sent"}
    new_messages = [m for m in fake_slack.messages if m.ts not in messages_before]
    assert len({m.ts for m in fake_slack.parents(CHANNEL)} - messages_before) == len(SERVICES)
    for parent in parents:
        replies = fake_slack.replies(parent.ts)
        assert len(replies) == 1, [r.text for r in replies]
        assert "Resolved" in (replies[0].text or "")
    assert len(new_messages) == 2 * len(SERVICES), "a parent and one resolution reply each"
