"""Email through a real worker to a real SMTP server (STARTTLS, AUTH): one message
per event, threaded; re-sends change nothing; 4xx retried, 5xx recorded; storms
become digests; the password stays out of the log."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from incident.metrics import read_histograms
from tests.conftest import ApiProcess, WorkerProcess, running_api, running_worker, wait_for
from tests.factories import alert, payload
from tests.fakes.smtp import PASSWORD, FakeSMTP
from tests.notifications.support import ledger, post

pytestmark = [pytest.mark.usefixtures("clean_state", "mail_worker"), pytest.mark.timeout(120)]

RECIPIENTS = ["oncall@example.com", "lead@example.com"]
PUBLIC_URL = "https://incident.example.com"
RULES = """
routes:
  - matchers: ['team="payments"']
    email: {to: [payments-oncall@example.com]}
escalation:
  SEV1: {email: true}
  SEV2: {email: true}
  SEV3: {email: true}
  SEV4: {email: true}
"""


@pytest.fixture(scope="module")
def fake_smtp() -> Iterator[FakeSMTP]:
    with FakeSMTP() as smtp:
        yield smtp


@pytest.fixture(scope="module")
def mail_env(incident_environment, fake_smtp, tmp_path_factory) -> dict[str, str]:
    rules = tmp_path_factory.mktemp("rules") / "rules.yml"
    rules.write_text(RULES)
    return {
        **incident_environment,
        "INCIDENT_RULES_FILE": str(rules),
        "INCIDENT_SMTP_URL": fake_smtp.url,
        "INCIDENT_EMAIL_FROM": "incident@example.com",
        "INCIDENT_EMAIL_TO": ",".join(RECIPIENTS),
        "INCIDENT_EMAIL_DIGEST_SECONDS": "2",
        "INCIDENT_PUBLIC_URL": PUBLIC_URL,
        # The worker trusts the fake server's throwaway CA, and only it.
        "SSL_CERT_FILE": str(fake_smtp.ca_path),
    }


@pytest.fixture(scope="module")
def mail_worker(mail_env, tmp_path_factory) -> Iterator[WorkerProcess]:
    yield from running_worker(mail_env, tmp_path_factory)


@pytest.fixture(scope="module")
def mail_api(mail_env, tmp_path_factory) -> Iterator[ApiProcess]:
    yield from running_api(mail_env, tmp_path_factory)


@pytest.fixture
def inbox(fake_smtp):
    """The messages received since the test began."""
    seen = len(fake_smtp.received())
    return lambda: fake_smtp.received()[seen:]


def _mail_rows(incident_id: int | None = None) -> list[dict]:
    return [row for row in ledger(incident_id) if row["channel"] == "email"]


def _all_done(count: int):
    def done():
        rows = _mail_rows()
        settled = len(rows) == count and all(r["status"] in ("sent", "failed") for r in rows)
        return rows if settled else None
    return done


def test_opening_escalation_and_resolution_are_one_threaded_message_each(
    mail_api, fake_smtp, inbox
):
    first = alert(severity="critical")
    post(mail_api, payload(first))
    wait_for(lambda: len(inbox()) == 1, timeout=30, what="the opening's mail")
    # Alertmanager re-sends the group, and an HA pair sends it twice more.
    for _ in range(3):
        post(mail_api, payload(first))
    worse = alert(severity="critical", env="prod")
    post(mail_api, payload(first, worse))
    wait_for(lambda: len(inbox()) == 2, timeout=30, what="the escalation's mail")
    resolved = payload(alert("resolved", severity="critical"),
                       alert("resolved", severity="critical", env="prod"))
    post(mail_api, resolved)
    post(mail_api, resolved)
    rows = wait_for(_all_done(3), timeout=30, what="three mail rows delivered")

    opening, escalation, resolution = inbox()
    assert len(inbox()) == 3
    assert [r["action"] for r in rows] == ["trigger", "escalate", "resolve"]
    assert [r["status"] for r in rows] == ["sent"] * 3
    assert opening["Subject"] == "[SEV2] HighErrorRate api (#1)"
    assert escalation["Subject"] == "[SEV1] HighErrorRate api (#1)"
    # The ledger names each message by its Message-ID, <…> included.
    assert [r["external_id"] for r in rows] == [m["Message-ID"] for m in inbox()]
    root = opening["Message-ID"]
    assert root.startswith("<") and root.endswith(">")
    assert opening["In-Reply-To"] is None
    for later in (escalation, resolution):
        assert later["In-Reply-To"] == root
        assert later["References"] == root
    assert {m["To"] for m in inbox()} == {", ".join(RECIPIENTS)}
    assert sorted(fake_smtp.messages[-1][0]) == sorted(RECIPIENTS)
    link = f"{PUBLIC_URL}/incidents/1"
    for message in inbox():
        text = message.get_body(("plain",)).get_content()
        html = message.get_body(("html",)).get_content()
        assert link in text
        assert f'href="{link}"' in html
    assert "Resolved" in resolution.get_body(("plain",)).get_content()
    # Sent over STARTTLS, after AUTH.
    assert all(fake_smtp.tls_used[-3:])


def test_a_temporary_refusal_is_retried_and_delivered_once(mail_api, fake_smtp, inbox):
    before = fake_smtp.data_commands
    fake_smtp.answers.append("421 4.3.2 Service not available, try later")
    post(mail_api, payload(alert(alertname="DiskFull", severity="critical")))
    [row] = wait_for(_all_done(1), timeout=30, what="the mail delivered after a retry")
    assert row["status"] == "sent"
    assert row["attempts"] == 2
    assert fake_smtp.data_commands - before == 2
    assert len(inbox()) == 1
    assert inbox()[0]["Message-ID"] == row["external_id"]


def test_a_permanent_refusal_is_recorded_as_failed_with_the_reply(mail_api, fake_smtp, inbox):
    before = fake_smtp.data_commands
    fake_smtp.answers.append("550 5.7.1 Relaying denied")
    post(mail_api, payload(alert(alertname="DiskFull", severity="critical")))
    [row] = wait_for(_all_done(1), timeout=30, what="the mail recorded as failed")
    assert row["status"] == "failed"
    assert "550 5.7.1 Relaying denied" in row["last_error"]
    assert row["attempts"] == 1
    assert fake_smtp.data_commands - before == 1
    assert inbox() == []


def test_a_storm_of_low_severities_becomes_one_digest(mail_api, inbox, redis_client):
    names = [f"Storm{n}" for n in range(9)]
    for name in names:
        post(mail_api, payload(alert(alertname=name, severity="warning")))
    rows = wait_for(_all_done(len(names)), timeout=60, what="every storm mail told")
    assert all(r["status"] == "sent" for r in rows)
    digested = [r for r in rows if r["external_id"].startswith("digest:")]
    alone = [r for r in rows if not r["external_id"].startswith("digest:")]
    # A few go out on their own, the rest in one digest message.
    assert 1 <= len(alone) < len(names) and digested
    assert len(inbox()) == len(alone) + 1
    [digest] = [m for m in inbox() if m["Subject"].startswith("[digest]")]
    assert {r["external_id"] for r in digested} == {"digest:" + digest["Message-ID"]}
    body = digest.get_body(("plain",)).get_content()
    told = [name for name in names if f"{name} api:" in body]
    assert len(told) == len(digested)
    # Each mail timed from its webhook to the server accepting it, digested or not.
    wait_for(lambda: _mail_timed(redis_client, "SEV3") == len(names), timeout=10,
             what="every mail timed")


def _mail_timed(client, severity: str) -> float:
    series = read_histograms(client)["incident_webhook_to_notification_seconds"]
    observed = series.get(("email", severity))
    return observed.buckets.get("+Inf", 0) if observed else 0


def test_the_smtp_password_is_never_logged(mail_worker, mail_api, fake_smtp):
    fake_smtp.answers.append("421 4.3.2 try later")
    post(mail_api, payload(alert(alertname="Logged", severity="critical")))
    wait_for(_all_done(1), timeout=30, what="the mail delivered")
    log = mail_worker.log()
    assert "notification retry" in log
    assert PASSWORD not in log
    assert PASSWORD not in mail_api.log()


def test_a_routed_incident_mails_its_routes_recipients_not_the_default(mail_api, fake_smtp, inbox):
    post(mail_api, payload(alert(severity="critical", team="payments")))
    [opening] = wait_for(lambda: inbox() or None, timeout=30, what="the routed opening's mail")
    assert opening["To"] == "payments-oncall@example.com"
    assert fake_smtp.messages[-1][0] == ["payments-oncall@example.com"]

