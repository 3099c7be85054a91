"""TLS trust for PagerDuty: the fake's throwaway CA is trusted when given as
``ca_bundle`` or through ``SSL_CERT_FILE`` (how worker subprocesses get it),
and refused otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from incident.integrations.base import IncidentView, TransientDeliveryError
from incident.integrations.pagerduty import PagerDutyNotifier
from tests.fakes.pagerduty import FakePagerDuty


def test_the_fakes_ca_given_as_ca_bundle_is_trusted(
    pager: PagerDutyNotifier, fake_pagerduty: FakePagerDuty, incident: IncidentView
) -> None:
    pager.resolve(incident.key)

    assert len(fake_pagerduty.events) == 1


def test_without_the_ca_the_certificate_is_refused(
    fake_pagerduty: FakePagerDuty, incident: IncidentView, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    notifier = PagerDutyNotifier(fake_pagerduty.routing_key, events_url=fake_pagerduty.url)

    with pytest.raises(TransientDeliveryError, match="CERTIFICATE_VERIFY_FAILED"):
        notifier.resolve(incident.key)

    assert fake_pagerduty.events == []


def test_ssl_cert_file_makes_the_default_client_trust_the_ca(
    fake_pagerduty: FakePagerDuty, incident: IncidentView, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", fake_pagerduty.ca_path)
    notifier = PagerDutyNotifier(fake_pagerduty.routing_key, events_url=fake_pagerduty.url)

    notifier.acknowledge(incident.key)

    assert [event["event_action"] for event in fake_pagerduty.events] == ["acknowledge"]


def test_a_subprocess_with_ssl_cert_file_pages_through_build_pager(
    fake_pagerduty: FakePagerDuty,
) -> None:
    script = textwrap.dedent(
        """
        from incident.config import Settings
        from incident.integrations import build_pager

        build_pager(Settings()).resolve("from-a-subprocess")
        """
    )
    env = {
        **os.environ,
        "SSL_CERT_FILE": fake_pagerduty.ca_path,
        "INCIDENT_PAGERDUTY_ROUTING_KEY": fake_pagerduty.routing_key,
        "INCIDENT_PAGERDUTY_EVENTS_URL": fake_pagerduty.url,
    }

    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)

    assert [event["dedup_key"] for event in fake_pagerduty.events] == ["from-a-subprocess"]
