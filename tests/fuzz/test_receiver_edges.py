"""Named hostile inputs, each with the answer it is owed, through the receiver and a real worker.

Oversize bodies, deep nesting, invalid UTF-8, 10,000 labels, duplicate keys and
wrong types.
"""

from __future__ import annotations

import time

import orjson
import pytest

from tests.conftest import WEBHOOK_TOKEN
from tests.factories import alert, payload
from tests.fuzz.conftest import (
    URL,
    accepted_and_applied,
    assert_error_body,
    assert_rejection_names_fields,
    dumps,
    group_of,
    incident_counts,
    padded,
    post,
    set_path,
)

pytestmark = pytest.mark.fuzz

# --- oversize ------------------------------------------------------------------


def test_a_body_of_exactly_the_limit_is_accepted_and_one_byte_more_is_413(receiver, verdict):
    limit = receiver.app.state.settings.max_body_bytes
    over = post(receiver, padded(limit + 1))
    assert over.status_code == 413
    assert str(limit) in assert_error_body(over)["error"]

    def chunks(data: bytes):
        for start in range(0, len(data), 1 << 20):
            yield data[start:start + (1 << 20)]

    # Streamed, with no Content-Length to go by: the count while reading decides.
    streamed = receiver.post(
        URL, content=chunks(padded(limit + 1)),
        headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}", "Content-Type": "application/json"},
    )
    assert streamed.status_code == 413
    body = padded(limit)
    accepted_and_applied(receiver, verdict, body, group_of(orjson.loads(body)))


# --- deep nesting ----------------------------------------------------------------



def _nested(depth: int) -> orjson.Fragment:
    return orjson.Fragment(b"[" * depth + b"]" * depth)


@pytest.mark.parametrize(
    ("depth", "expected"),
    [(10, {422}), (1_000, {422}), (10_000, {400})],
)
def test_deep_nesting_in_a_label_value_is_rejected_quickly(receiver, depth, expected):
    body = payload(alert())
    body["alerts"][0]["labels"]["deep"] = _nested(depth)
    started = time.monotonic()
    response = post(receiver, dumps(body))
    assert time.monotonic() - started < 2
    assert response.status_code in expected, response.text[:300]
    if response.status_code == 422:
        assert "alerts.0.labels.deep" in assert_rejection_names_fields(response)
    else:
        assert "depth" in assert_error_body(response)["error"]


@pytest.mark.parametrize(
    "depth",
    # 300 stays under the depth that kills the worker (test_worker_poison).
    [10, 300, 1_000, 1_020, 10_000],
)
def test_deep_nesting_in_an_unknown_field_never_gets_500(receiver, verdict, depth):
    body = payload(alert(instance=f"deep-{depth}"), notification_extra=_nested(depth))
    raw = dumps(body)
    started = time.monotonic()
    response = post(receiver, raw)
    assert time.monotonic() - started < 2
    assert response.status_code in {202, 400, 422}, response.text[:300]
    if response.status_code == 202:
        # Ignored as unknown fields are: the worker must still apply the payload.
        verdict.settle({group_of(body)})
        verdict.assert_healthy()
    else:
        assert_error_body(response)


# --- invalid UTF-8 --------------------------------------------------------------

_VALID = dumps(payload(alert(instance="__SLOT__")))


@pytest.mark.parametrize(
    "bad",
    [b"\xff", b"\xc3\x28", b"\xc0\xaf", b"\xe2\x82", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xe9t\xe9"],
    ids=["ff", "bad-continuation", "overlong-slash", "truncated-3-byte", "encoded-surrogate",
         "5-byte-form", "latin-1"],
)
@pytest.mark.parametrize("where", ["value", "key"])
def test_invalid_utf8_gets_400_saying_utf8(receiver, bad, where):
    slot = b'"__SLOT__"' if where == "value" else b'"instance"'
    replacement = b'"' + bad + b'"'
    body = _VALID.replace(slot, replacement, 1)
    assert body != _VALID
    response = post(receiver, body)
    assert response.status_code == 400
    assert "UTF-8" in assert_error_body(response)["error"]


@pytest.mark.parametrize(
    "body",
    [_VALID.decode().encode("utf-16"), b"\xef\xbb\xbf" + _VALID],
    ids=["utf-16", "utf-8-bom"],
)
def test_json_not_in_plain_utf8_gets_400(receiver, body):
    response = post(receiver, body)
    assert response.status_code == 400
    assert "JSON" in assert_error_body(response)["error"]


def test_an_escaped_lone_surrogate_gets_400_naming_it(receiver):
    response = post(receiver, _VALID.replace(b"__SLOT__", b"\\ud800", 1))
    assert response.status_code == 400
    assert "surrogate" in assert_error_body(response)["error"]


# --- 10,000 labels ---------------------------------------------------------------


def test_an_alert_with_10000_labels_is_accepted_and_becomes_an_incident(receiver, verdict):
    """Well under 5 MiB, so a valid Alertmanager payload: accepted and stored whole."""
    many = {f"label_{i:05d}": f"value {i} ✓" for i in range(10_000)}
    body = payload(alert(**many))
    raw = dumps(body)
    assert len(raw) < receiver.app.state.settings.max_body_bytes
    started = time.monotonic()
    incident = accepted_and_applied(receiver, verdict, raw, group_of(body))
    assert time.monotonic() - started < 30
    [stored] = incident["alerts"]
    assert stored["labels"] == body["alerts"][0]["labels"]
    assert incident["labels"] == body["commonLabels"]
    assert incident["title"] == "HighErrorRate api"


def test_10000_labels_over_the_size_limit_get_413_not_422(receiver):
    long_value = "v" * 600
    body = payload(alert(**{f"label_{i:05d}": long_value for i in range(10_000)}))
    response = post(receiver, dumps(body))
    assert response.status_code == 413
    assert_error_body(response)


# --- duplicate keys: the last one wins, for the receiver and the worker alike ----


def duplicated(body: dict, path: tuple, key: str, first: object) -> bytes:
    """``body`` serialised with ``key`` twice in the object at ``path``: ``first``, then its own value."""
    target = body
    for part in path:
        target = target[part]
    last = target.pop(key)
    target["__first__"] = target["__last__"] = None
    raw = dumps(body)
    raw = raw.replace(b'"__first__":null', dumps(key) + b":" + dumps(first), 1)
    return raw.replace(b'"__last__":null', dumps(key) + b":" + dumps(last), 1)


def test_duplicate_keys_keep_the_last_so_a_bad_first_status_is_accepted(receiver, verdict):
    body = payload(alert(instance="dup-status"))
    raw = duplicated(body, (), "status", "bogus")
    assert raw.count(b'"status":"bogus"') == 1 and raw.count(b'"status":"firing"') == 2
    accepted_and_applied(receiver, verdict, raw, group_of(body))


def test_duplicate_keys_keep_the_last_so_a_bad_last_status_is_422(receiver):
    body = {**payload(alert(instance="dup-status-2")), "status": "bogus"}
    response = post(receiver, duplicated(body, (), "status", "firing"))
    assert "status" in assert_rejection_names_fields(response)


def test_duplicate_group_keys_group_by_the_last_one_in_receiver_and_worker(receiver, verdict):
    body = payload(alert(instance="dup-group"))
    first_group = group_of({**body, "groupKey": "{}:{first}"})
    last_group = group_of(body)
    accepted_and_applied(receiver, verdict, duplicated(body, (), "groupKey", "{}:{first}"), last_group)
    assert incident_counts({first_group}) == {}


def test_a_duplicate_label_keeps_the_last_value_for_severity_and_storage(receiver, verdict):
    body = payload(alert(instance="dup-label", severity="critical"))
    raw = duplicated(body, ("alerts", 0, "labels"), "severity", "info")
    incident = accepted_and_applied(receiver, verdict, raw, group_of(body))
    assert incident["alerts"][0]["labels"]["severity"] == "critical"
    assert incident["severity"] == "SEV2"


def test_a_duplicate_alerts_key_keeps_the_last_list(receiver, verdict):
    body = payload(alert(instance="dup-alerts"))
    emptied = {**body, "alerts": []}
    response = post(receiver, duplicated(emptied, (), "alerts", body["alerts"]))
    assert "alerts" in assert_rejection_names_fields(response)
    accepted_and_applied(receiver, verdict, duplicated(dict(body), (), "alerts", []), group_of(body))


# --- wrong types: each field named --------------------------------------------------

WRONG_TYPES = [
    ("version", 4), ("version", ["4"]), ("groupKey", 42), ("groupKey", None),
    ("truncatedAlerts", "many"), ("truncatedAlerts", [0]), ("status", True), ("status", None),
    ("receiver", {}), ("receiver", 7), ("groupLabels", ["alertname"]), ("commonLabels", "service=api"),
    ("commonAnnotations", 3), ("externalURL", ["http://am"]), ("alerts", {"0": {}}), ("alerts", "x"),
    ("alerts.0", "x"), ("alerts.0", None), ("alerts.0.status", 1), ("alerts.0.labels", [["a", "b"]]),
    ("alerts.0.labels", None), ("alerts.0.labels.alertname", ["x"]), ("alerts.0.labels.alertname", None),
    ("alerts.0.annotations", "summary"), ("alerts.0.annotations.summary", {"text": "x"}),
    ("alerts.0.startsAt", "soon"), ("alerts.0.startsAt", "2026-02-30T00:00:00Z"),
    ("alerts.0.startsAt", {"seconds": 1}), ("alerts.0.startsAt", None), ("alerts.0.endsAt", ["x"]),
    ("alerts.0.endsAt", "2026-11-22T03:00:00+99:00"), ("alerts.0.generatorURL", 1),
    ("alerts.0.fingerprint", 123), ("alerts.0.fingerprint", ["a"]), ("alerts.0.fingerprint", "f" * 257),
]


@pytest.mark.parametrize(("path", "value"), WRONG_TYPES, ids=[f"{p}={v!r:.20}" for p, v in WRONG_TYPES])
def test_a_wrong_type_gets_422_naming_exactly_that_field(receiver, path, value):
    response = post(receiver, dumps(set_path(payload(alert()), path, value)))
    assert assert_rejection_names_fields(response) == [path]


def test_every_top_level_field_wrong_at_once_names_them_all(receiver):
    body = payload(alert())
    wrong = {"version": 4, "groupKey": 1, "truncatedAlerts": "x", "status": 2, "receiver": 3,
             "groupLabels": [], "commonLabels": [], "commonAnnotations": [], "externalURL": 4,
             "alerts": {}}
    assert set(wrong) == set(body)
    named = assert_rejection_names_fields(post(receiver, dumps({**body, **wrong})))
    assert sorted(named) == sorted(wrong)


@pytest.mark.parametrize(
    ("path", "value"),
    [("alerts.0.startsAt", 1_700_000_000), ("alerts.0.startsAt", "1700000000"),
     ("alerts.0.endsAt", 1.7e9), ("truncatedAlerts", "5"), ("truncatedAlerts", True)],
)
def test_a_coercible_wrong_type_is_still_named(receiver, path, value):
    response = post(receiver, dumps(set_path(payload(alert()), path, value)))
    assert assert_rejection_names_fields(response) == [path]
