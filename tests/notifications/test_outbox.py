"""The outbox: what a committed change asks for is sent even when its worker dies
right after the commit, and a row waiting in a stalled queue is sent once."""

from __future__ import annotations

import base64
import os
import time
from collections import Counter
from pathlib import Path

import httpx
import orjson
import pytest
import redis
from sqlalchemy import create_engine, text

from incident.incidents.grouping import MAX_ALERTS_PER_INCIDENT
from tests.conftest import WorkerProcess, wait_for
from tests.factories import alert
from tests.faults.conftest import BeatProcess
from tests.notifications.support import post

SEV1 = {"severity": "critical", "env": "prod"}

# Loaded by every Python process whose PYTHONPATH starts with its folder (the
# workers of the first test): the first time a process is about to send what
# it committed with a notification, it SIGKILLs its whole worker, main process
# and pool, as an OOM kill or a lost machine would. Only the first: the flag
# file, created exclusively, says whether it already happened, and when.
DIE_AFTER_COMMIT = '''
import os, signal, time
flag = os.environ.get("INCIDENT_TEST_DIE_AFTER_COMMIT")
if flag:
    from incident.incidents import outbox
    _send = outbox.send_committed

    def _die_once(bind, rows, publish):
        if any(row.task == "incident.notifications.deliver" for row in rows):
            try:
                fd = os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return _send(bind, rows, publish)
            os.write(fd, repr(time.time()).encode())
            os.close(fd)
            os.killpg(os.getpgid(0), signal.SIGKILL)
        return _send(bind, rows, publish)

    outbox.send_committed = _die_once
'''


def payload(*alerts: dict, group: str = "api") -> dict:
    return {
        "version": "4", "groupKey": f'{{}}:{{service="{group}"}}', "truncatedAlerts": 0,
        "status": "firing", "receiver": "oncall",
        "groupLabels": {"service": group}, "commonLabels": alerts[0]["labels"],
        "commonAnnotations": {}, "externalURL": "http://alertmanager:9093", "alerts": list(alerts),
    }


def test_a_worker_killed_between_the_commit_and_the_send_still_pages_within_five_seconds(
    clean_state, notify_env, notifying_api, fake_pagerduty, tmp_path: Path
):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(DIE_AFTER_COMMIT)
    flag = tmp_path / "killed-at"
    env = {
        **notify_env,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])),
        "INCIDENT_TEST_DIE_AFTER_COMMIT": str(flag),
    }
    workers = [WorkerProcess(env, tmp_path / f"worker{n}.log") for n in (1, 2)]
    try:
        for worker in workers:
            worker.wait_ready()
        seen = len(fake_pagerduty.events)
        post(notifying_api, payload(alert(**SEV1)))

        killed_at = float(wait_for(lambda: flag.exists() and flag.read_text(), timeout=30,
                                   what="a worker killed right after its commit"))
        triggers = wait_for(
            lambda: [e for e in fake_pagerduty.events[seen:] if e["event_action"] == "trigger"],
            timeout=30, interval=0.02, what="the PagerDuty trigger",
        )
        paged_after = time.time() - killed_at
        dead = [w for w in workers if w.proc.poll() is not None]
        assert len(dead) == 1, "exactly one worker was killed, main process and pool"
        assert paged_after < 5.0, f"the page came {paged_after:.1f}s after the kill"
        time.sleep(2)  # room for a second copy to show, if one were coming
        again = [e for e in fake_pagerduty.events[seen:] if e["event_action"] == "trigger"]
        assert len(triggers) == len(again) == 1
    finally:
        for worker in workers:
            worker.stop()


def _notify_queue_ids(client: redis.Redis) -> Counter[int]:
    """The notification id of every message waiting in the ``notify`` queue."""
    ids: Counter[int] = Counter()
    for raw in client.lrange("notify", 0, -1):
        message = orjson.loads(raw)
        body = base64.b64decode(message["body"])
        _args, kwargs, _embed = orjson.loads(body)
        ids[kwargs["notification_id"]] += 1
    return ids


@pytest.mark.timeout(240)
def test_rows_waiting_behind_a_stalled_notify_queue_are_enqueued_once(
    clean_state, notify_env, notifying_api, tmp_path: Path
):
    """2,000 ledger rows wait in ``notify`` while no worker takes from it. The
    sweeper runs every second and the outbox poll in every worker all along;
    each row still has exactly one message in the queue after 60 s."""
    broker = redis.Redis.from_url(notify_env["INCIDENT_BROKER_URL"])
    env = {**notify_env, "INCIDENT_ESCALATION_POLL_SECONDS": "1"}
    worker = WorkerProcess(env, tmp_path / "worker.log", queues="ingest,page,remediate,maintenance")
    beat = BeatProcess(env, tmp_path / "beat.log")
    database = create_engine(notify_env["INCIDENT_DATABASE_URL"])

    def ledger_rows() -> int:
        with database.connect() as conn:
            return conn.scalar(text("SELECT count(*) FROM notifications"))

    try:
        worker.wait_ready()
        rows = 2000
        # Two SEV3 openings (a Slack parent each), then 999 more alerts in each
        # group (a thread reply each; an incident keeps at most 1,000 alerts):
        # 2,000 rows, none urgent, all on `notify`.
        per_group = MAX_ALERTS_PER_INCIDENT
        with httpx.Client() as client:
            for group in ("api", "db"):
                firing = [alert(severity="warning", instance=f"{group}{n}", service=group)
                          for n in range(per_group)]
                told = ledger_rows()
                post(notifying_api, payload(firing[0], group=group), client)
                wait_for(lambda told=told: ledger_rows() == told + 1, timeout=60, interval=0.2,
                         what="the opening")
                post(notifying_api, payload(*firing, group=group), client)

        wait_for(lambda: ledger_rows() == rows, timeout=120, interval=0.5, what="2,000 rows")
        with database.begin() as conn:
            # Stands for three minutes in the stalled queue: past the two
            # minutes after which the old sweeper re-sent a pending row every tick.
            conn.execute(text("UPDATE notifications SET created_at = created_at - "
                              "interval '3 minutes'"))
        time.sleep(60)
        beat.check_alive()
        worker.check_alive()
        assert "sweep_undelivered" in beat.log(), "the sweeper was never sent"

        queued = _notify_queue_ids(broker)
        with database.connect() as conn:
            ids = set(conn.scalars(text("SELECT id FROM notifications WHERE status = 'pending'")))
            unsent = conn.scalar(text("SELECT count(*) FROM outbox_messages WHERE relayed_at IS NULL"))
        assert len(ids) == rows
        assert set(queued) == ids, "a pending row has no message"
        twice = {row: n for row, n in queued.items() if n > 1}
        assert not twice, f"{len(twice)} rows enqueued more than once"
        assert unsent == 0
    finally:
        database.dispose()
        beat.stop()
        worker.stop()
