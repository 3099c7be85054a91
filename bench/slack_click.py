"""Slack clicks: an Acknowledge click → the api's 200, and → PagerDuty's acknowledge.

The real api and one worker (``--concurrency 2``, every queue) talk to the fake
Slack and PagerDuty of ``tests.fakes``, served from this process; clicks are
signed as Slack signs them. First ``incidents`` SEV1 webhooks open as many
incidents (each a group of its own) at a steady pace of one a second, what
one Slack channel takes, which is the reference
measured in the same run: webhook POST → 202 and → PagerDuty trigger. Then one
Acknowledge click per incident at the same pace: click POST → 200 and → the
acknowledge event the fake PagerDuty received for that incident's key.

Both ends are ``time.monotonic()`` in this process: the moment a request was
sent and the fake's ``RecordedRequest.at``. After the clicks, every incident
must be acknowledged by the Slack user who clicked, with exactly one
acknowledge event each.
"""

from __future__ import annotations

import json
import time
from urllib.parse import urlencode

import httpx
from slack_sdk.signature import SignatureVerifier
from sqlalchemy import create_engine, text

from bench.loadgen import percentile
from bench.payloads import GroupBodies, group_id
from bench.stack import WEBHOOK_TOKEN, Stack
from tests.fakes.pagerduty import DEFAULT_ROUTING_KEY, FakePagerDuty
from tests.fakes.slack import DEFAULT_TOKEN, FakeSlack
from tests.fakes.slack_responses import FakeResponseUrls

SIGNING_SECRET = "bench-slack-signing-secret-5a1e"
CLICK_200_TARGET_MS = 3000.0  # Slack's own limit for an answer
USER = {"id": "U0BENCH01", "username": "bench", "name": "bench"}


def run(stack: Stack, *, quick: bool) -> dict:
    plan = {
        "incidents": 20 if quick else 60,
        # At Slack's own pace (one message a second per channel), so that what is
        # measured is the click's path, not a storm queued behind the rate limit.
        "pace_per_s": 1.0,
        "api_workers": 1,
        "worker_concurrency": 2,
        "wait_s": 60,
        "settle_wait_s": 120 if quick else 600,
    }
    tag = f"bench-slack-{stack.run_id}"
    engine = create_engine(stack.database_url, pool_size=1)
    with FakePagerDuty() as pagerduty, FakeSlack(channels=("incidents",)) as slack, \
            FakeResponseUrls() as responses:
        env = {
            "INCIDENT_PAGERDUTY_ROUTING_KEY": DEFAULT_ROUTING_KEY,
            "INCIDENT_PAGERDUTY_EVENTS_URL": pagerduty.url,
            "SSL_CERT_FILE": pagerduty.ca_path,
            "INCIDENT_SLACK_BOT_TOKEN": DEFAULT_TOKEN,
            "INCIDENT_SLACK_CHANNEL": slack.channel_id("incidents"),
            "INCIDENT_SLACK_API_URL": slack.url,
            "INCIDENT_SLACK_SIGNING_SECRET": SIGNING_SECRET,
        }
        stack.purge_all_queues()
        api = stack.api(plan["api_workers"], env=env, name="slack")
        worker = stack.worker(plan["worker_concurrency"], env=env)
        try:
            api.wait_ready()
            with httpx.Client(base_url=api.url, timeout=10) as client:
                bodies = GroupBodies(1, tag, prefix=group_id(tag), severities=("critical",))
                webhooks = _open_incidents(client, bodies, plan)
                incidents = _await_incidents(engine, tag, plan, worker)
                keys = {key for key, _ in incidents.values()}
                triggers = _await_events(pagerduty, "trigger", keys, plan, worker)
                settle_s = _await_settled(engine, tag, plan, worker)
                clicks = _click_each(client, sorted(incidents), responses, plan)
                acks = _await_events(pagerduty, "acknowledge", keys, plan, worker)
            by_slack = _acknowledged_by_slack(engine, tag)
            acked_at = _acknowledged_at(engine, tag)
        finally:
            worker.stop()
            api.stop()
            engine.dispose()
            stack.purge_all_queues()
    result = _summary(plan, webhooks, incidents, triggers, clicks, acks, by_slack)
    result["settle_before_clicks_s"] = round(settle_s, 1)
    result["stages_ms"] = _stages(clicks, incidents, acks, acked_at)
    return result


def _open_incidents(client: httpx.Client, bodies: GroupBodies, plan: dict) -> list[dict]:
    headers = {"Authorization": f"Bearer {WEBHOOK_TOKEN}", "Content-Type": "application/json"}
    sent = []
    pace = _Pace(plan["pace_per_s"])
    for i in range(plan["incidents"]):
        pace.wait(i)
        started = time.monotonic()
        response = client.post("/webhooks/alertmanager", content=bodies(i), headers=headers)
        sent.append({"group": bodies.group(i), "at": started, "status": response.status_code,
                     "answer_s": time.monotonic() - started})
    return sent


class _Pace:
    """The i-th request is due i / rate seconds after the first."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.start = 0.0

    def wait(self, i: int) -> None:
        if i == 0:
            self.start = time.monotonic()
        delay = self.start + i / self.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def _await_incidents(engine, tag: str, plan: dict, worker) -> dict[int, tuple[str, str]]:
    """Incident id -> (key, webhook group), once every webhook has made its incident."""
    deadline = time.monotonic() + plan["wait_s"]
    while True:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT id, key, labels->>'service' AS service FROM incidents "
                     "WHERE receiver = :r"), {"r": tag},
            ).all()
        if len(rows) >= plan["incidents"] or time.monotonic() > deadline:
            return {row.id: (row.key, row.service.removeprefix("svc-")) for row in rows}
        worker.check_alive()
        time.sleep(0.2)


def _await_events(pagerduty, action: str, keys: set[str], plan: dict, worker) -> dict[str, list]:
    """For each key: the arrival times of its ``action`` events, once each has one."""
    deadline = time.monotonic() + plan["wait_s"]
    while True:
        seen: dict[str, list[float]] = {}
        for request in pagerduty.calls("/v2/enqueue"):
            key = request.body.get("dedup_key")
            if request.body.get("event_action") == action and key in keys:
                seen.setdefault(key, []).append(request.at)
        if len(seen) == len(keys) or time.monotonic() > deadline:
            time.sleep(1.0)  # a repeated event would arrive about now
            return {key: [r.at for r in pagerduty.calls("/v2/enqueue")
                          if r.body.get("dedup_key") == key
                          and r.body.get("event_action") == action] for key in seen}
        worker.check_alive()
        time.sleep(0.2)


def _click_each(client: httpx.Client, incident_ids: list[int], responses, plan: dict) -> list[dict]:
    verifier = SignatureVerifier(SIGNING_SECRET)
    clicks = []
    pace = _Pace(plan["pace_per_s"])
    for i, incident_id in enumerate(incident_ids):
        payload = {
            "type": "block_actions", "user": USER, "response_url": responses.new_url(),
            "actions": [{"action_id": "incident.acknowledge", "value": str(incident_id),
                         "type": "button", "block_id": "incident.actions"}],
        }
        body = urlencode({"payload": json.dumps(payload)}).encode()
        pace.wait(i)
        stamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": verifier.generate_signature(timestamp=stamp, body=body),
        }
        started = time.monotonic()
        response = client.post("/slack/interactions", content=body, headers=headers)
        clicks.append({"incident_id": incident_id, "at": started, "status": response.status_code,
                       "answer_s": time.monotonic() - started})
    return clicks


def _await_settled(engine, tag: str, plan: dict, worker) -> float:
    """Seconds until no notification of the opened incidents waits (Slack's parents
    go out at about one a second): the clicks then meet a quiet system."""
    started = time.monotonic()
    deadline = started + plan["settle_wait_s"]
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            waiting = conn.execute(
                text("SELECT count(*) FROM notifications n JOIN incidents i "
                     "ON i.id = n.incident_id WHERE i.receiver = :r "
                     "AND n.status IN ('pending', 'sending')"), {"r": tag},
            ).scalar_one()
        if not waiting:
            break
        worker.check_alive()
        time.sleep(0.5)
    return time.monotonic() - started


def _acknowledged_at(engine, tag: str) -> dict[int, float]:
    """Incident id -> when it was acknowledged (wall clock)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, acknowledged_at FROM incidents WHERE receiver = :r "
                 "AND acknowledged_at IS NOT NULL"), {"r": tag},
        ).all()
    return {row.id: row.acknowledged_at.timestamp() for row in rows}


def _stages(clicks, incidents, acks, acked_at) -> dict:
    """Click → acknowledged in PostgreSQL (api, page queue, the click's task) →
    the acknowledge received by PagerDuty (outbox, page queue, delivery)."""
    offset = time.time() - time.monotonic()
    to_acknowledged, to_pagerduty = [], []
    for c in clicks:
        key = incidents[c["incident_id"]][0]
        if c["incident_id"] in acked_at and key in acks:
            acknowledged = acked_at[c["incident_id"]] - offset
            to_acknowledged.append(acknowledged - c["at"])
            to_pagerduty.append(acks[key][0] - acknowledged)
    return {"to_acknowledged": _ms(to_acknowledged), "to_pagerduty": _ms(to_pagerduty)}


def _acknowledged_by_slack(engine, tag: str) -> int:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT count(*) FROM incidents WHERE receiver = :r AND status = 'acknowledged' "
                 "AND acknowledged_by->>'by' = 'slack' AND acknowledged_by->>'user' = :u"),
            {"r": tag, "u": USER["id"]},
        ).scalar_one()


def _ms(values: list[float]) -> dict:
    ordered = sorted(values)
    return {
        "p50_ms": percentile(ordered, 50) * 1e3,
        "p99_ms": percentile(ordered, 99) * 1e3,
        "max_ms": (ordered[-1] if ordered else float("nan")) * 1e3,
        "n": len(ordered),
    }


def _summary(plan, webhooks, incidents, triggers, clicks, acks, by_slack) -> dict:
    sent_at = {w["group"]: w["at"] for w in webhooks}
    trigger_latency = [triggers[key][0] - sent_at[group]
                       for key, group in incidents.values() if key in triggers]
    ack_latency = [acks[key][0] - c["at"] for c in clicks
                   if (key := incidents[c["incident_id"]][0]) in acks]
    duplicate_acks = sum(len(v) - 1 for v in acks.values())
    click_answers = _ms([c["answer_s"] for c in clicks if c["status"] == 200])
    return {
        "plan": plan,
        "incidents": len(incidents),
        "clicks": len(clicks),
        "clicks_200": sum(c["status"] == 200 for c in clicks),
        "click_to_200": click_answers,
        "click_to_pagerduty_ack": _ms(ack_latency),
        "acknowledged_by_slack_user": by_slack,
        "duplicate_acknowledges": duplicate_acks,
        "reference_webhook_to_202": _ms([w["answer_s"] for w in webhooks if w["status"] == 202]),
        "reference_webhook_to_pagerduty_trigger": _ms(trigger_latency),
        "click_200_target_ms": CLICK_200_TARGET_MS,
        "target_met": bool(clicks)
        and click_answers["max_ms"] < CLICK_200_TARGET_MS
        and by_slack == len(incidents) == len(clicks) == plan["incidents"]
        and len(ack_latency) == len(clicks)
        and duplicate_acks == 0,
    }
