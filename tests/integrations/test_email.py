"""The SMTP notifier against a real SMTP server: implicit TLS, stable Message-IDs,
reply classes; the console's stand-in; what email needs from settings and plans."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from incident.config import Settings
from incident.incidents.models import TimelineKind
from incident.integrations import build_mailer, console
from incident.integrations.base import PermanentDeliveryError, TransientDeliveryError
from incident.integrations.email import EmailNotifier, message_id
from incident.notifications.models import Action, Channel
from incident.notifications.planning import Channels, IncidentState, plan
from incident.rules import Severity, parse_rules
from tests.fakes.smtp import PASSWORD, FakeSMTP
from tests.integrations.conftest import make_incident

TO = ["oncall@example.com"]


@pytest.fixture(scope="module")
def smtps() -> Iterator[FakeSMTP]:
    with FakeSMTP(implicit_tls=True) as server:
        yield server


@pytest.fixture
def mailer(smtps, monkeypatch) -> EmailNotifier:
    monkeypatch.setenv("SSL_CERT_FILE", str(smtps.ca_path))
    return EmailNotifier(smtps.url, "incident@example.com", timeout=5)


def test_smtps_speaks_tls_from_the_first_byte_and_logs_in(mailer, smtps):
    mid = mailer.send(TO, make_incident(), "Opened", ledger_id=7, stamp="2026-12-03T18:00:00")

    _, message = smtps.messages[-1]
    assert smtps.tls_used[-1] is True
    assert smtps.logins[-1] == "mailer"
    assert message["Message-ID"] == mid
    assert message["Subject"] == "[SEV1] HighErrorRate api (#42)"


def test_a_retried_row_sends_the_same_message_id(mailer, smtps):
    first = mailer.send(TO, make_incident(), "Opened", ledger_id=8, stamp="a")
    again = mailer.send(TO, make_incident(), "Opened", ledger_id=8, stamp="a")

    assert first == again == message_id(8, "a", "example.com")
    assert message_id(8, "b", "example.com") != first  # another installation's row 8


def test_reply_classes_decide_retries(mailer, smtps):
    smtps.answers.append("452 4.2.2 Mailbox full")
    with pytest.raises(TransientDeliveryError, match=r"452 4\.2\.2 Mailbox full"):
        mailer.send(TO, make_incident(), "x", ledger_id=9, stamp="a")
    smtps.answers.append("554 5.7.1 Message rejected")
    with pytest.raises(PermanentDeliveryError, match=r"554 5\.7\.1 Message rejected") as caught:
        mailer.send(TO, make_incident(), "x", ledger_id=9, stamp="a")
    assert PASSWORD not in str(caught.value)


def test_a_refused_connection_is_temporary():
    from incident.embedded import free_port

    notifier = EmailNotifier(f"smtp://u:{PASSWORD}@127.0.0.1:{free_port()}", "a@example.com",
                             timeout=2)
    with pytest.raises(TransientDeliveryError) as caught:
        notifier.send(TO, make_incident(), "x", ledger_id=1, stamp="a")
    assert PASSWORD not in str(caught.value)


def test_email_needs_a_url_and_a_sender(monkeypatch):
    # Recipients come from the incident's route, else INCIDENT_EMAIL_TO.
    for name in ("INCIDENT_SMTP_URL", "INCIDENT_EMAIL_FROM", "INCIDENT_EMAIL_TO"):
        monkeypatch.delenv(name, raising=False)
    url = f"smtp://u:{PASSWORD}@mail.example.com"
    assert build_mailer(Settings(smtp_url=url)) is None
    assert build_mailer(Settings(email_from="a@example.com")) is None
    assert isinstance(build_mailer(Settings(smtp_url=url, email_from="a@example.com")),
                      EmailNotifier)
    settings = Settings(smtp_url=url, email_from="a@example.com", email_to="x@example.com, y@example.com")

    assert isinstance(build_mailer(settings), EmailNotifier)
    assert settings.email_recipients == ["x@example.com", "y@example.com"]
    assert PASSWORD in settings.secret_values() and url in settings.secret_values()
    assert PASSWORD not in repr(settings)


def test_the_console_shows_the_mail_it_would_send():
    with capture_logs() as logs:
        console().send_mail("oncall@example.com", make_incident(), "Opened", ledger_id=3)

    [line] = logs
    assert line["event"] == "would send email"
    assert line["subject"] == "[SEV1] HighErrorRate api (#42)"
    assert line["to"] == "oncall@example.com"
    assert line["incident_url"] == make_incident().incident_url


RULES = parse_rules("""
escalation:
  SEV2: {slack: true, email: true}
  SEV3: {email: true}
  SEV4: {slack: true}
""")
MAIL = Channels(slack=False, slack_default_channel=None, pagerduty=False, email=True,
                email_to=("oncall@example.com",))
# Without SMTP, INCIDENT_EMAIL_TO is still known: the console shows who would get it.
CONSOLE = Channels(slack=False, slack_default_channel=None, pagerduty=False,
                   email_to=("oncall@example.com",))


def _told(kind, severity, channels, **detail):
    # Told before: the default Slack channel has the incident's parent.
    incident = IncidentState(Severity(severity), False, frozenset(), frozenset({""}))
    return plan(kind, detail, incident, RULES.escalation_for(incident.severity), channels)


def test_mail_is_for_the_opening_the_escalation_and_the_resolution():
    told = {kind: [(p.channel, p.action, p.target, p.priority) for p in _told(kind, "SEV2", MAIL)]
            for kind in TimelineKind}

    assert told[TimelineKind.OPENED] == [(Channel.EMAIL, Action.TRIGGER, "oncall@example.com", True)]
    assert told[TimelineKind.ESCALATED][0][1] == Action.ESCALATE
    assert told[TimelineKind.SEVERITY_CHANGED][0][1] == Action.ESCALATE
    assert told[TimelineKind.RESOLVED][0][1] == Action.RESOLVE
    assert told[TimelineKind.ACKNOWLEDGED] == told[TimelineKind.NOTE] == []
    assert _told(TimelineKind.OPENED, "SEV3", MAIL)[0].priority is False
    assert _told(TimelineKind.OPENED, "SEV4", MAIL) == []


def test_without_smtp_the_console_row_carries_the_mail():
    [opened] = _told(TimelineKind.OPENED, "SEV3", CONSOLE)
    [noted] = _told(TimelineKind.NOTE, "SEV3", CONSOLE, note="hi")

    assert opened.channel is Channel.CONSOLE and opened.target == "mail:oncall@example.com"
    assert noted.target is None
