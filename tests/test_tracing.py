"""One webhook that pages is one trace: the receiver's request, the ingest task,
the PagerDuty and Slack calls, SQL; and the worker's log lines name the trace.

A real api and a real worker export over OTLP/HTTP to a local collector that
decodes what they send with ``opentelemetry-proto``.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from opentelemetry import propagate, trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from sqlalchemy.orm import Session

from incident.db import engine_for
from incident.incidents.outbox import OutboxMessage
from incident.notifications.ledger import DELIVER_TASK
from incident.queues import NOTIFY

from tests.conftest import ApiProcess, WorkerProcess, notifiers_env, running_api, running_worker, wait_for
from tests.factories import alert, payload
from tests.fakes.otlp import FakeCollector, Span
from tests.fakes.pagerduty import FakePagerDuty
from tests.fakes.slack import FakeSlack
from tests.fakes.smtp import FakeSMTP
from tests.notifications.support import post, settled

CHANNEL = "incidents"
RULES = f"""
escalation:
  SEV1: {{pagerduty: critical, slack: true, email: true}}
remediations:
  - name: note-outage
    matchers: ['alertname="TracedOutage"']
    action: command
    with: {{argv: {json.dumps([sys.executable, "-c", "pass"])}, timeout: 20s}}
"""
INGEST_SPAN = "run/incident.incidents.ingest_webhook"
DELIVER_SPAN = f"run/{DELIVER_TASK}"

pytestmark = [pytest.mark.usefixtures("clean_state"), pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def collector() -> Iterator[FakeCollector]:
    with FakeCollector() as running:
        yield running


@pytest.fixture(scope="module")
def fake_slack() -> Iterator[FakeSlack]:
    with FakeSlack(channels=(CHANNEL,)) as slack:
        yield slack


@pytest.fixture(scope="module")
def fake_pagerduty() -> Iterator[FakePagerDuty]:
    with FakePagerDuty() as pagerduty:
        yield pagerduty


@pytest.fixture(scope="module")
def fake_smtp() -> Iterator[FakeSMTP]:
    with FakeSMTP() as smtp:
        yield smtp


@pytest.fixture(scope="module")
def traced_env(
    incident_environment, collector, fake_slack, fake_pagerduty, fake_smtp, tmp_path_factory
) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("traced")
    rules = directory / "rules.yml"
    rules.write_text(RULES)
    # The worker trusts both fakes' throwaway CAs.
    cas = directory / "ca.pem"
    cas.write_bytes(
        fake_pagerduty.ca.cert_pem.bytes() + fake_smtp.ca.cert_pem.bytes()
    )
    return {
        **incident_environment,
        **notifiers_env(fake_slack, fake_pagerduty, CHANNEL),
        "INCIDENT_RULES_FILE": str(rules),
        "INCIDENT_SMTP_URL": fake_smtp.url,
        "INCIDENT_EMAIL_FROM": "incident@example.com",
        "INCIDENT_EMAIL_TO": "oncall@example.com",
        "SSL_CERT_FILE": str(cas),
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        # Spans leave within a tenth of a second, so the test need not wait long.
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }


@pytest.fixture(scope="module")
def traced_worker(traced_env, tmp_path_factory) -> Iterator[WorkerProcess]:
    yield from running_worker(traced_env, tmp_path_factory)


@pytest.fixture(scope="module")
def traced_api(traced_env, tmp_path_factory) -> Iterator[ApiProcess]:
    yield from running_api(traced_env, tmp_path_factory)


def ancestors(span: Span, by_id: dict[str, Span]) -> list[Span]:
    chain = []
    while span.parent_span_id:
        parent = by_id.get(span.parent_span_id)
        assert parent is not None, f"{span.name!r} has a parent that was never exported"
        chain.append(parent)
        span = parent
    return chain


def url(span: Span) -> str:
    # The stable HTTP semantic conventions' name, or the older one.
    return str(span.attributes.get("url.full") or span.attributes.get("http.url") or "")


def summary(spans: list[Span]) -> str:
    return "; ".join(
        f"{s.process} {s.kind} {s.name!r} trace={s.trace_id[:8]} id={s.span_id[:6]}"
        f" parent={s.parent_span_id[:6] or '-'}" for s in spans
    )


def descends_from(span: Span, ancestor: Span, by_id: dict[str, Span]) -> bool:
    return ancestor in ancestors(span, by_id)


def test_a_paging_webhook_is_one_trace_from_the_receiver_to_every_outside_call(
    traced_worker, traced_api, collector, fake_pagerduty
):
    post(traced_api, payload(alert(alertname="TracedOutage", severity="critical", env="prod")))
    shown = settled(traced_api)
    assert {(n["channel"], n["status"]) for n in shown["notifications"]} == {
        ("pagerduty", "sent"), ("slack", "sent"), ("email", "sent"),
    }

    def receiver_span() -> Span | None:
        return next((s for s in collector.spans() if s.kind == "server"
                     and s.name.startswith("POST /webhooks/alertmanager")), None)

    root = wait_for(receiver_span, timeout=10, what="the receiver's span")
    pd_port = fake_pagerduty.port

    def whole_trace() -> list[Span] | None:
        spans = [s for s in collector.spans() if s.trace_id == root.trace_id]
        pagerduty = [s for s in spans if s.kind == "client"
                     and f":{pd_port}/" in url(s)]
        slack = [s for s in spans if s.name == "slack chat.postMessage"]
        email = [s for s in spans if s.name == "smtp send"]
        remediation = [s for s in spans if s.name == "remediation note-outage"]
        return spans if pagerduty and slack and email and remediation else None

    try:
        spans = wait_for(whole_trace, timeout=20, what="every outside call's span in the trace")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; exported: {summary(collector.spans())}") from None
    by_id = {s.span_id: s for s in spans}
    assert not collector.bad_requests

    assert root.parent_span_id == "" and root.process == "api" and root.service == "incident"

    ingest = [s for s in spans if s.name == INGEST_SPAN]
    assert len(ingest) == 1 and ingest[0].kind == "consumer" and ingest[0].process == "worker"
    assert descends_from(ingest[0], root, by_id)

    # Every deliver task of this webhook (one per channel, and any that waited for
    # a token or a parent message) continues its trace, through the outbox.
    deliveries = [s for s in spans if s.name == DELIVER_SPAN]
    assert len(deliveries) >= 3
    assert all(descends_from(s, ingest[0], by_id) for s in deliveries)

    pagerduty = [s for s in spans if s.kind == "client"
                 and f":{pd_port}/" in url(s)]
    assert len(pagerduty) == 1
    attributes = pagerduty[0].attributes
    assert attributes.get("http.request.method", attributes.get("http.method")) == "POST"
    # The parent message, and a thread reply for the remediation's run.
    slack = [s for s in spans if s.name == "slack chat.postMessage"]
    assert slack and all(s.kind == "client" for s in slack)
    email = [s for s in spans if s.name == "smtp send"]
    assert len(email) == 1 and email[0].kind == "client"
    remediation = [s for s in spans if s.name == "remediation note-outage"]
    assert len(remediation) == 1 and remediation[0].kind == "client"
    assert remediation[0].attributes["incident.remediation.action"] == "command"
    run = by_id[remediation[0].parent_span_id]
    assert run.name == "run/incident.remediation.run"
    for call in (*pagerduty, *slack, *email, *remediation):
        assert descends_from(call, ingest[0], by_id), call

    sql = [s for s in spans if s.kind == "client"
           and "postgresql" in (str(s.attributes.get("db.system")), str(s.attributes.get("db.system.name")))]
    assert any(descends_from(s, ingest[0], by_id) for s in sql), "no SQL span under the ingest task"
    # The receiver's publish to Redis is in the request's span, too.
    assert any(s.process == "api" and "redis" in (str(s.attributes.get("db.system")),
                                                   str(s.attributes.get("db.system.name")))
               for s in spans)

    # Each span lies in the trace once: no unfinished or duplicated exports.
    assert len(by_id) == len(spans)

    # Log lines carry the trace and span ids.
    wait_for(lambda: f'"trace_id": "{root.trace_id}"' in traced_worker.log(),
             timeout=10, what="a worker log line with the trace id")
    lines = [line for line in traced_worker.log().splitlines() if root.trace_id in line]
    assert any('"span_id": "' in line for line in lines)


def test_each_webhook_is_a_trace_of_its_own(traced_worker, traced_api, collector):
    seen = {s.trace_id for s in collector.spans()}
    post(traced_api, payload(alert(alertname="SecondTrace", severity="warning")))
    settled(traced_api)

    def new_receiver_spans() -> list[Span] | None:
        found = [s for s in collector.spans() if s.kind == "server"
                 and s.name.startswith("POST /webhooks/alertmanager") and s.trace_id not in seen]
        return found or None

    (root,) = wait_for(new_receiver_spans, timeout=10, what="the second webhook's span")
    wait_for(lambda: any(s.name == INGEST_SPAN and s.trace_id == root.trace_id
                         for s in collector.spans()), timeout=10, what="its ingest span")


def test_a_message_the_outbox_poll_sends_continues_the_trace_it_was_written_in(
    traced_worker, collector, database_url
):
    """The fast path failed (say): the worker's poll, in another process, publishes
    the message later, and its task still joins the trace that wrote it."""
    written_in = SpanContext(
        trace_id=random.getrandbits(128), span_id=random.getrandbits(64), is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    headers: dict[str, str] = {}
    propagate.inject(headers, context=trace.set_span_in_context(NonRecordingSpan(written_in)))
    long_ago = datetime.now(UTC) - timedelta(minutes=1)
    with Session(engine_for(database_url)) as session, session.begin():
        session.add(OutboxMessage(
            task=DELIVER_TASK, queue=NOTIFY, kwargs={"notification_id": 987654321},
            options={"headers": headers}, not_before=long_ago, created_at=long_ago,
        ))

    trace_id = format(written_in.trace_id, "032x")

    def delivered() -> list[Span] | None:
        found = [s for s in collector.spans() if s.trace_id == trace_id and s.name == DELIVER_SPAN]
        return found or None

    (run,) = wait_for(delivered, timeout=15, what="the polled message's task span")
    assert run.parent_span_id == format(written_in.span_id, "016x")
