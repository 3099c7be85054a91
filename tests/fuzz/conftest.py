"""Generated input for the receiver: strategies, a client on the real app, and the worker's verdict.

Every hypothesis run here is derandomized and keeps no example database, so CI
sees the same examples on every run and needs no ``.hypothesis`` folder.
"""

from __future__ import annotations

import copy
import operator
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
import redis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from sqlalchemy import text

from incident.alerts.identity import group_hash
from incident.api.app import create_app
from incident.config import get_settings
from incident.db import engine_for
from incident.incidents.deadletters import DEAD_LETTERS_KEY
from tests.conftest import API_TOKEN, WEBHOOK_TOKEN, WorkerProcess, wait_for
from tests.factories import alert, payload

URL = "/webhooks/alertmanager"
WEBHOOK_HEADERS = {"Authorization": f"Bearer {WEBHOOK_TOKEN}", "Content-Type": "application/json"}
GO_ZERO_TIME = "0001-01-01T00:00:00Z"
# Everything the receiver may answer to bad input; 503 only when a dependency is down.
RECEIVER_STATUSES = {202, 400, 401, 413, 415, 422}


def fuzz_settings(max_examples: int) -> settings:
    """Bounded, reproducible, and silent about health checks that only mean 'big inputs'."""
    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=False,
        suppress_health_check=list(HealthCheck),
    )


# --- adversarial text ------------------------------------------------------

# Valid payloads leave out what the receiver rightly refuses (NUL characters,
# timestamps without an offset or outside years 1-9999 in UTC); those are
# tested as rejections in test_receiver_bugs. (Surrogates are left out because
# they cannot be encoded as UTF-8 at all.)
CHARS = st.characters(codec="utf-8", exclude_characters="\x00")

NASTY = [
    " ", "\t", "\r\n", "\x01\x02\x1f", "\x7f", "\x1b[31mred\x1b[0m", "\u202eevil", "\ufeffbom",
    "\u200b", "e\u0301", "😀", "👩\u200d👩\u200d👧", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\u2028\u2029", "\U0010ffff", "\ue000",
    "null", "None", "true", "0", "-1", "1e309", "NaN", "{}", "[]", '"', "\\", "\\u0000", "%00",
    "'; DROP TABLE incidents; --", "<script>alert(1)</script>", "${jndi:ldap://x/a}", "{{7*7}}",
    "%s%n%x", "../../../etc/passwd", "http://[::1]:0/", "a" * 256, "Watchdog ", "SEV1",
]


def adversarial_text(*, min_size: int = 0, max_size: int = 40) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(CHARS, min_size=min_size, max_size=max_size),
        st.sampled_from([s for s in NASTY if min_size <= len(s)]),
    )


def huge_text() -> st.SearchStrategy[str]:
    """Up to a few hundred kilobytes of one character, ASCII, accented, emoji or control."""
    return st.builds(
        operator.mul, st.sampled_from(["x", "é", "😀", "\x01", " ", "\u202e"]),
        st.integers(1_000, 60_000),
    )


def huge_label_value() -> st.SearchStrategy[str]:
    """As large as a label value may be (16 KiB of UTF-8, the receiver's cap), of one character."""
    from incident.alerts.limits import LABEL_LIMIT_BYTES

    return st.sampled_from(["x", "é", "😀", "\x01", " ", "\u202e"]).flatmap(
        lambda char: st.integers(1_000, LABEL_LIMIT_BYTES // len(char.encode())).map(
            lambda n: char * n
        )
    )


def labels(*, max_size: int = 6) -> st.SearchStrategy[dict[str, str]]:
    return st.dictionaries(adversarial_text(), adversarial_text(), max_size=max_size)


# --- timestamps as Alertmanager writes them (RFC 3339, up to nanoseconds) ---

_OFFSETS = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))


@st.composite
def rfc3339(draw: st.DrawFn) -> str:
    moment = draw(st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31), timezones=_OFFSETS))
    fraction = draw(st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=9)))
    offset = moment.utcoffset() or timedelta(0)
    if not offset and draw(st.booleans()):
        zone = "Z"
    else:
        minutes = int(offset.total_seconds()) // 60
        zone = f"{'-' if minutes < 0 else '+'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + zone


# --- payloads ----------------------------------------------------------------

TOP_FIELDS = {
    "version", "groupKey", "truncatedAlerts", "status", "receiver", "groupLabels", "commonLabels",
    "commonAnnotations", "externalURL", "alerts",
}
ALERT_FIELDS = {"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"}
# populate_by_name: the Python names fill the same fields, so an "extra" must avoid them too.
PYTHON_NAMES = {
    "group_key", "truncated_alerts", "group_labels", "common_labels", "common_annotations",
    "external_url", "starts_at", "ends_at", "generator_url",
}

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


def extra_fields(known: set[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Fields a newer Alertmanager might add: any name we do not know, any JSON value."""
    names = st.text(max_size=12).filter(lambda name: name not in known and name not in PYTHON_NAMES)
    return st.dictionaries(names, json_values, max_size=3)


def alerts(*, big: bool = False) -> st.SearchStrategy[dict[str, Any]]:
    # Label values up to the receiver's cap (beyond it: a 422, tested on its own);
    # annotations have no cap.
    label_value = st.one_of(adversarial_text(), huge_label_value()) if big else adversarial_text()
    value = st.one_of(adversarial_text(), huge_text()) if big else adversarial_text()
    return st.fixed_dictionaries(
        {
            "status": st.sampled_from(["firing", "resolved"]),
            "labels": st.dictionaries(adversarial_text(), label_value, max_size=6),
            "startsAt": rfc3339(),
            "fingerprint": st.one_of(
                st.text(CHARS, min_size=1, max_size=256),
                st.sampled_from([s for s in NASTY if s]),
                st.just("f" * 256),
            ),
        },
        optional={
            "annotations": st.dictionaries(adversarial_text(), value, max_size=4),
            "endsAt": st.one_of(st.just(GO_ZERO_TIME), rfc3339(), st.none()),
            "generatorURL": adversarial_text(),
        },
    )


@st.composite
def alertmanager_payloads(draw: st.DrawFn, *, big: bool = False, extras: bool = True) -> dict:
    """Structurally valid version-4 payloads whose every string is hostile."""
    body = draw(st.fixed_dictionaries(
        {
            "version": st.just("4"),
            "groupKey": adversarial_text(min_size=1),
            "status": st.sampled_from(["firing", "resolved"]),
            "receiver": adversarial_text(min_size=1),
            # Alertmanager never repeats a fingerprint within one notification.
            "alerts": st.lists(alerts(big=big), min_size=1, max_size=5,
                               unique_by=operator.itemgetter("fingerprint")),
        },
        optional={
            "truncatedAlerts": st.integers(0, 2**63 - 1),
            "groupLabels": labels(),
            "commonLabels": labels(),
            "commonAnnotations": labels(),
            "externalURL": adversarial_text(),
        },
    ))
    if extras:
        body.update(draw(extra_fields(TOP_FIELDS)))
        body["alerts"][0].update(draw(extra_fields(ALERT_FIELDS)))
    return body


# --- broken payloads: which fields were broken, to check the 422 names them ---

_STRING_WRONG = [1, 1.5, True, None, [], {}, ["x"]]
_LABELS_WRONG = [[], "a=b", 1, None, True, [["a", "b"]]]
_LABEL_VALUE_WRONG = [1, 1.5, None, True, [], {}]
_TIME_WRONG = ["yesterday", "", "2026-13-01T00:00:00Z", "2026-11-22T25:00:00Z",
               "2026-11-22T03:00:00+25:00", [], {}, True]
TOP_WRONG: dict[str, list[Any]] = {
    "version": [4, 4.0, "3", "", "v4", None, [], {}, True],
    "groupKey": [*_STRING_WRONG, ""],
    "receiver": [*_STRING_WRONG, ""],
    "status": [1, None, "", "FIRING", "pending", [], {}],
    # Not "5", 1.0 or true: pydantic's lax int takes those (see the report).
    "truncatedAlerts": ["many", -1, 1.5, None, [], {}],
    "groupLabels": _LABELS_WRONG,
    "commonLabels": _LABELS_WRONG,
    "commonAnnotations": _LABELS_WRONG,
    "externalURL": [1, True, None, [], {}],
    "alerts": [{}, {"0": {}}, "x", 1, None, []],
}
ALERT_WRONG: dict[str, list[Any]] = {
    "status": [1, None, "", "pending", [], {}],
    "labels": _LABELS_WRONG,
    "annotations": _LABELS_WRONG,
    # Not numbers or bare dates: pydantic's lax datetime takes those (see the report).
    "startsAt": [*_TIME_WRONG, None],
    "endsAt": _TIME_WRONG,
    "generatorURL": [1, True, None, [], {}],
    "fingerprint": [*_STRING_WRONG, "", "f" * 257],
}
TOP_REQUIRED = ["version", "groupKey", "status", "receiver", "alerts"]
ALERT_REQUIRED = ["status", "labels", "startsAt", "fingerprint"]
LABEL_MAPS = ["groupLabels", "commonLabels", "commonAnnotations"]

assert set(TOP_WRONG) == TOP_FIELDS
assert set(ALERT_WRONG) == ALERT_FIELDS


@st.composite
def mutation(draw: st.DrawFn, body: dict) -> tuple[tuple[Any, ...], str, Any]:
    """One break: (path, "remove" | "set", value)."""
    n = len(body["alerts"])
    kind = draw(st.sampled_from(
        ["top_remove", "top_wrong", "alert_remove", "alert_wrong", "alert_item", "label_value"]
    ))
    i = draw(st.integers(0, n - 1))
    if kind == "top_remove":
        return (draw(st.sampled_from(TOP_REQUIRED)),), "remove", None
    if kind == "top_wrong":
        name = draw(st.sampled_from(sorted(TOP_WRONG)))
        return (name,), "set", draw(st.sampled_from(TOP_WRONG[name]))
    if kind == "alert_remove":
        return ("alerts", i, draw(st.sampled_from(ALERT_REQUIRED))), "remove", None
    if kind == "alert_wrong":
        name = draw(st.sampled_from(sorted(ALERT_WRONG)))
        return ("alerts", i, name), "set", draw(st.sampled_from(ALERT_WRONG[name]))
    if kind == "alert_item":
        return ("alerts", i), "set", draw(st.sampled_from([1, "x", None, [], True]))
    where = draw(st.sampled_from([*LABEL_MAPS, "labels", "annotations"]))
    key = draw(st.text(max_size=8))
    path = ("alerts", i, where, key) if where in ("labels", "annotations") else (where, key)
    return path, "set", draw(st.sampled_from(_LABEL_VALUE_WRONG))


def _overlaps(a: tuple, b: tuple) -> bool:
    return a[: len(b)] == b or b[: len(a)] == a


@st.composite
def broken_payloads(draw: st.DrawFn) -> tuple[dict, list[str]]:
    body = draw(alertmanager_payloads(extras=False))
    chosen: list[tuple[tuple, str, Any]] = []
    for _ in range(draw(st.integers(1, 3))):
        path, op, value = draw(mutation(body))
        if not any(_overlaps(path, other[0]) for other in chosen):
            chosen.append((path, op, value))
    broken = copy.deepcopy(body)
    for path, op, value in chosen:
        parent = broken
        for part in path[:-1]:
            parent = parent.setdefault(part, {}) if isinstance(parent, dict) else parent[part]
        if op == "remove":
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = copy.deepcopy(value)
    return broken, [".".join(str(p) for p in path) for path, _, _ in chosen]


def group_of(body: dict) -> str:
    return group_hash(body["receiver"], body["groupKey"])


# --- what a rejection must look like -----------------------------------------


def assert_rejection_names_fields(response) -> list[str]:
    """A 422: JSON with ``error`` and one ``{field, message}`` per failing field."""
    assert response.status_code == 422, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    fields = body.get("fields")
    assert isinstance(fields, list) and fields, body
    for entry in fields:
        assert isinstance(entry.get("field"), str), entry
        assert isinstance(entry.get("message"), str) and entry["message"], entry
    return [entry["field"] for entry in fields]


def assert_error_body(response) -> dict:
    """Every 4xx from the receiver is JSON with a non-empty ``error``."""
    assert response.headers["content-type"].startswith("application/json"), response.text[:300]
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    return body


def post(client, body: bytes, headers: dict | None = None):
    return client.post(URL, content=body, headers=headers or WEBHOOK_HEADERS)


def dumps(body: Any) -> bytes:
    return orjson.dumps(body)


# --- fixtures ------------------------------------------------------------------


@pytest.fixture(scope="module")
def receiver(incident_environment: dict[str, str]) -> Iterator[TestClient]:
    """The real app in-process; a 500 comes back as a response, as uvicorn would send it."""
    with TestClient(create_app(get_settings()), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def verdict(
    worker: WorkerProcess, redis_client: redis.Redis, request: pytest.FixtureRequest
) -> WorkerVerdict:
    """A worker with nothing in hand and empty tables: what it does next is this test's."""
    idle = WorkerVerdict(worker, redis_client)
    # TRUNCATE beside a task still finishing the last test's work can deadlock.
    try:
        wait_for(idle.quiet, timeout=30, interval=0.1, what="the worker to go idle")
    except AssertionError:
        pass  # the test's own checks will say what the worker is stuck on
    request.getfixturevalue("clean_state")
    return WorkerVerdict(worker, redis_client)


class WorkerVerdict:
    """What the worker made of everything posted since this object was created."""

    QUEUES = ("ingest", "page", "notify", "remediate")

    def __init__(self, worker: WorkerProcess, client: redis.Redis) -> None:
        self.worker = worker
        self.redis = client
        self.log_offset = len(worker.log())

    def new_log(self) -> str:
        return self.worker.log()[self.log_offset:]

    def failures(self) -> list[str]:
        """Tasks that raised something unexpected, and payloads parked as unprocessable."""
        found = [line[:2000] for line in self.new_log().splitlines() if "raised unexpected" in line]
        found += [f"dead letter: {raw[:2000]!r}" for raw in self.redis.lrange(DEAD_LETTERS_KEY, 0, -1)]
        return found

    def drained(self) -> bool:
        return all(self.redis.llen(q) == 0 for q in self.QUEUES) and not self.redis.hlen("unacked")

    def quiet(self) -> bool:
        """Drained on three looks in a row: a message is briefly in neither list while taken."""
        for _ in range(3):
            if not self.drained():
                return False
            time.sleep(0.05)
        return True

    def settle(self, groups: set[str], *, timeout: float = 60.0) -> dict[str, int]:
        """Wait until every group is stored and the queues are empty, or something failed.

        Answers each group's incident count.
        """

        def finished() -> bool:
            self.worker.check_alive()
            if self.failures():
                return True
            return set(incident_counts(groups)) >= groups and self.quiet()

        wait_for(finished, timeout=timeout, interval=0.1, what="the worker to process every payload")
        return incident_counts(groups)

    def assert_healthy(self) -> None:
        self.worker.check_alive()
        failures = self.failures()
        assert not failures, "\n".join(failures)


def incident_counts(groups: set[str]) -> dict[str, int]:
    """For each stored group among ``groups``: how many incidents it has had."""
    if not groups:
        return {}
    with engine_for(get_settings().require_database_url()).connect() as conn:
        rows = conn.execute(
            text(
                "SELECT g.group_hash, count(i.id) FROM alert_groups g "
                "LEFT JOIN incidents i ON i.group_id = g.id "
                "WHERE g.group_hash = ANY(:groups) GROUP BY g.group_hash"
            ),
            {"groups": list(groups)},
        ).all()
    return {row[0]: row[1] for row in rows}


# --- posting and checking outcomes -----------------------------------------------

API_HEADERS = {"Authorization": f"Bearer {API_TOKEN}"}


def accepted_and_applied(receiver, verdict, body: bytes, group: str) -> dict:
    """POST, expect 202, wait for the worker, and answer the group's incident as the API shows it."""
    response = post(receiver, body)
    assert response.status_code == 202, response.text[:500]
    counts = verdict.settle({group})
    verdict.assert_healthy()
    assert counts.get(group) == 1, f"the worker made {counts.get(group)} incidents of the group"
    items = receiver.get("/api/incidents", headers=API_HEADERS).json()["items"]
    [summary] = items
    detail = receiver.get(f"/api/incidents/{summary['id']}", headers=API_HEADERS)
    assert detail.status_code == 200, detail.text[:500]
    return detail.json()


def either_rejected_naming_or_applied(receiver, verdict, body: dict, field: str) -> None:
    """What hostile-but-parseable input is owed: a 422 naming ``field``, or a clean incident."""
    response = post(receiver, dumps(body))
    if response.status_code == 422:
        assert field in assert_rejection_names_fields(response)
        return
    assert response.status_code == 202, response.text[:300]
    counts = verdict.settle({group_of(body)})
    verdict.assert_healthy()
    assert counts.get(group_of(body)) == 1


def set_path(body: dict, path: str, value: object) -> dict:
    """Set the value at a dotted path (``alerts.0.startsAt``), list indexes included."""
    *parents, last = path.split(".")
    target = body
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    target[int(last) if isinstance(target, list) else last] = value
    return body


def padded(size: int) -> bytes:
    """A valid payload padded with JSON whitespace to exactly ``size`` bytes."""
    body = dumps(payload(alert(instance="padded")))
    return body + b" " * (size - len(body))


