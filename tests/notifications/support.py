"""Helpers shared by the notification tests: posting webhooks, reading incidents
through the API, and reading the ledger and timeline straight from PostgreSQL."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import psutil
from sqlalchemy import select

from tests.conftest import API_TOKEN, WEBHOOK_TOKEN, WorkerProcess, wait_for

HOOK = {"Authorization": f"Bearer {WEBHOOK_TOKEN}", "Content-Type": "application/json"}
API = {"Authorization": f"Bearer {API_TOKEN}"}


def post(api, body: dict[str, Any], client: httpx.Client | None = None) -> None:
    send = client.post if client is not None else httpx.post
    response = send(
        f"{api.url}/webhooks/alertmanager", content=orjson.dumps(body), headers=HOOK, timeout=10
    )
    assert response.status_code == 202, response.text


def incident(api, incident_id: int = 1) -> dict[str, Any]:
    response = httpx.get(f"{api.url}/api/incidents/{incident_id}", headers=API, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def all_incidents(api) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 500}
        if cursor:
            params["cursor"] = cursor
        page = httpx.get(f"{api.url}/api/incidents", headers=API, params=params, timeout=30).json()
        items += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return items


def settled(api, incident_id: int = 1, *, timeout: float = 30) -> dict[str, Any]:
    """The incident once none of its notifications is pending any more."""

    def done():
        response = httpx.get(f"{api.url}/api/incidents/{incident_id}", headers=API, timeout=10)
        if response.status_code == 404:  # not ingested yet
            return None
        shown = response.json()
        pending = [n for n in shown.get("notifications", []) if n["status"] == "pending"]
        return shown if shown.get("notifications") and not pending else None

    return wait_for(done, timeout=timeout, interval=0.2, what="notifications delivered")


def ledger(incident_id: int | None = None) -> list[dict[str, Any]]:
    """Every ledger row (of one incident), oldest first, as plain dicts."""
    from incident.db import session_scope
    from incident.notifications.models import Notification

    query = select(Notification).order_by(Notification.id)
    if incident_id is not None:
        query = query.where(Notification.incident_id == incident_id)
    with session_scope() as session:
        return [
            {column: getattr(row, column) for column in (
                "id", "incident_id", "channel", "action", "step", "priority", "status",
                "attempts", "external_id", "last_error", "claimed_by", "created_at", "sent_at",
            )}
            for row in session.scalars(query)
        ]


def ledger_row(incident_id: int, channel: str, action: str = "trigger") -> dict[str, Any]:
    [row] = [r for r in ledger(incident_id) if (r["channel"], r["action"]) == (channel, action)]
    return row


def slack_posts(fake_slack, *, parents_only: bool = False) -> list:
    posts = fake_slack.calls("chat.postMessage")
    if parents_only:
        posts = [r for r in posts if not r.body.get("thread_ts")]
    return posts


def pool_children(worker: WorkerProcess) -> list[psutil.Process]:
    return worker.pool_processes()


def pool_child_talking_to(worker: WorkerProcess, port: int, *, timeout: float = 15) -> psutil.Process:
    """The worker's pool process with a TCP connection open to ``port`` (a fake service):
    the one in the middle of that request."""

    def find():
        for child in pool_children(worker):
            try:
                connections = child.net_connections(kind="tcp")
            except psutil.NoSuchProcess:
                continue
            if any(
                c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
                for c in connections
            ):
                return child
        return None

    return wait_for(find, timeout=timeout, interval=0.05, what=f"a pool process talking to :{port}")


def drained(redis_client) -> bool:
    """Nothing queued and nothing delivered but unacknowledged (includes ETA retries)."""
    queues = ("ingest", "page", "notify")
    return not any(redis_client.llen(q) for q in queues) and not redis_client.hlen("unacked")
