"""Without SMTP (or anything else) configured, the worker's console notifier shows
the mail a severity with `email: true` would send."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.conftest import ApiProcess, WorkerProcess, running_api, running_worker, wait_for
from tests.factories import alert, payload
from tests.notifications.support import post

pytestmark = [pytest.mark.usefixtures("clean_state", "console_worker"), pytest.mark.timeout(90)]


@pytest.fixture(scope="module")
def console_env(incident_environment, tmp_path_factory) -> dict[str, str]:
    rules = tmp_path_factory.mktemp("rules") / "rules.yml"
    rules.write_text("escalation:\n  SEV3: {email: true}\n")
    return {**incident_environment, "INCIDENT_RULES_FILE": str(rules),
            "INCIDENT_EMAIL_TO": "oncall@example.com"}


@pytest.fixture(scope="module")
def console_worker(console_env, tmp_path_factory) -> Iterator[WorkerProcess]:
    yield from running_worker(console_env, tmp_path_factory)


@pytest.fixture(scope="module")
def console_api(console_env, tmp_path_factory) -> Iterator[ApiProcess]:
    yield from running_api(console_env, tmp_path_factory)


def _mails(worker: WorkerProcess) -> list[dict]:
    lines = []
    for line in worker.log().splitlines():
        if '"would send email"' in line:
            lines.append(json.loads(line))
    return lines


def test_the_console_logs_the_mail_for_the_opening_and_the_resolution(console_api, console_worker):
    post(console_api, payload(alert(severity="warning")))
    [opening] = wait_for(lambda: _mails(console_worker), timeout=30, what="the opening's mail")
    post(console_api, payload(alert("resolved", severity="warning")))
    mails = wait_for(lambda: len(_mails(console_worker)) == 2 and _mails(console_worker),
                     timeout=30, what="the resolution's mail")

    assert opening["subject"] == "[SEV3] HighErrorRate api (#1)"
    assert opening["to"] == "oncall@example.com"
    assert opening["incident_url"].endswith("/incidents/1")
    assert mails[1]["text"].startswith("Resolved")
