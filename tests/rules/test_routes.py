"""The ``routes:`` section: validation with the line to edit, and the route an incident gets."""

from __future__ import annotations

import io
import json
from pathlib import Path
from textwrap import dedent

import pytest

from incident.cli.rules import check, explain
from incident.config import ConfigurationError
from incident.rules import RulesError, parse_rules, require_routing_keys

ROUTES = dedent("""\
    routes:
      - name: payments
        matchers: ['team="payments"']
        slack: {channel: "#payments-oncall"}
        pagerduty: {routing_key_env: PAGERDUTY_KEY_PAYMENTS}
        email: {to: ["payments-oncall@example.com"]}
        continue: true
      - matchers: ['team=~".+"']
        slack: {channel: "#team-{labels.team}"}
""")


def problems(text: str) -> str:
    with pytest.raises(RulesError) as raised:
        parse_rules(dedent(text), source="rules.yml")
    return str(raised.value)


def test_first_match_wins_unless_continue():
    rules = parse_rules(
        ROUTES + "  - matchers: ['team=\"search\"']\n    slack: {channel: \"#never\"}\n"
    )
    chosen = rules.destinations_for({"team": "payments"})
    assert chosen.routes == ("payments", "routes[1]")
    assert chosen.slack == ("#payments-oncall", "#team-payments")
    assert chosen.pagerduty == ("PAGERDUTY_KEY_PAYMENTS",)
    assert rules.destinations_for({"team": "search"}).slack == ("#team-search",)


def test_no_route_matched_means_every_default():
    chosen = parse_rules(ROUTES).destinations_for({"service": "api"})
    assert (chosen.routes, chosen.slack, chosen.pagerduty, chosen.email) == ((), (), (), ())
    assert chosen.email_to(["oncall@example.com"]) == ("oncall@example.com",)


def test_email_recipients_come_from_the_route_over_the_default():
    chosen = parse_rules(ROUTES).destinations_for({"team": "payments"})
    assert chosen.email_to(["oncall@example.com"]) == ("payments-oncall@example.com",)


def test_a_label_value_slack_would_refuse_falls_back_to_the_default_and_says_so():
    chosen = parse_rules(ROUTES).destinations_for({"team": "Web Shop"})
    assert chosen.routes == ("routes[1]",) and chosen.slack == ()
    assert "'#team-Web Shop' is not a name Slack accepts" in chosen.problems[0]
    assert chosen.as_record()["problems"] == list(chosen.problems)


def test_a_channel_from_a_label_the_route_does_not_require_is_refused_with_its_line():
    assert problems("""\
        routes:
          - matchers: ['env="prod"']
            slack: {channel: "#team-{labels.team}"}
    """) == (
        "rules.yml:3: routes[0].slack.channel: {labels.team} needs the route to match only "
        "incidents with label 'team': add a matcher such as 'team=~\".+\"'"
    )


def test_a_channel_name_slack_would_refuse_is_refused_with_its_line():
    assert problems("""\
        routes:
          - matchers: ['team="payments"']
            slack: {channel: "#Payments On-Call"}
    """).startswith(
        "rules.yml:3: routes[0].slack.channel: Slack channel '#Payments On-Call' is not a name "
        "Slack accepts: lowercase letters, digits, '-' and '_', at most 80 characters"
    )
    assert "at most 80" in problems(f"""\
        routes:
          - matchers: ['team="payments"']
            slack: {{channel: "#{'x' * 81}"}}
    """)


def test_only_label_placeholders_may_name_a_channel():
    assert "a channel may use only {labels.NAME}" in problems("""\
        routes:
          - matchers: ['team="payments"']
            slack: {channel: "#inc-{incident.id}"}
    """)


def test_pagerduty_email_and_unknown_keys_are_checked_with_their_lines():
    assert problems("""\
        routes:
          - matchers: ['team="payments"']
            pagerduty: {routing_key: abc123}
            email: {to: [not-an-address]}
            contineu: true
    """).splitlines() == [
        "rules.yml:3: routes[0].pagerduty.routing_key_env: required",
        "rules.yml:3: routes[0].pagerduty.routing_key: unknown key 'routing_key'; "
        "did you mean 'routing_key_env'? (expected one of: routing_key_env)",
        "rules.yml:4: routes[0].email.to[0]: 'not-an-address' is not an e-mail address",
        "rules.yml:5: routes[0].contineu: unknown key 'contineu'; did you mean 'continue'? "
        "(expected one of: name, matchers, continue, slack, pagerduty, email)",
    ]


def test_an_unset_routing_key_variable_is_named():
    rules = parse_rules(ROUTES)
    with pytest.raises(ConfigurationError, match="PAGERDUTY_KEY_PAYMENTS"):
        require_routing_keys(rules.routes, {})
    require_routing_keys(rules.routes, {"PAGERDUTY_KEY_PAYMENTS": "k"})


def test_rules_check_warns_about_unset_routing_key_variables(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("PAGERDUTY_KEY_PAYMENTS", raising=False)
    path = tmp_path / "rules.yml"
    path.write_text(ROUTES)
    out, err = io.StringIO(), io.StringIO()
    assert check(path, out, err) == 0
    assert out.getvalue().endswith("0 remediations, 2 routes\n")
    assert err.getvalue() == (
        "warning: routing_key_env PAGERDUTY_KEY_PAYMENTS is not set in this environment\n"
    )


def test_rules_test_prints_the_chosen_routes_and_destinations(tmp_path: Path):
    path = tmp_path / "rules.yml"
    path.write_text(ROUTES)
    labels = {"alertname": "HighErrorRate", "team": "payments", "severity": "critical"}
    payload = tmp_path / "payload.json"
    payload.write_text(json.dumps({
        "version": "4", "groupKey": "{}:{alertname=\"HighErrorRate\"}", "status": "firing",
        "receiver": "incident", "groupLabels": {"alertname": "HighErrorRate"},
        "commonLabels": labels, "commonAnnotations": {}, "externalURL": "http://am",
        "truncatedAlerts": 0,
        "alerts": [{"status": "firing", "labels": labels, "annotations": {},
                    "startsAt": "2026-01-01T00:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "", "fingerprint": "abc"}],
    }))
    out, err = io.StringIO(), io.StringIO()
    assert explain(path, payload, out, err) == 0
    assert out.getvalue().endswith(
        "Route: payments, routes[1]\n"
        "  slack: #payments-oncall, #team-payments\n"
        "  pagerduty: key from $PAGERDUTY_KEY_PAYMENTS\n"
        "  email: payments-oncall@example.com\n"
    )
