"""The rules file: Alertmanager matchers, severity classification, remediations,
escalation and maintenance settings.

``load_rules`` once at start-up, then ask the immutable ``Rules``:
``classify(labels)``, ``incident_severity(payload)``, ``matching_remediations(labels)``,
``escalation_for(severity)``.
"""

from incident.rules.escalation import Escalation, EscalationPolicy
from incident.rules.loader import RulesError, load_rules, parse_rules
from incident.rules.maintenance import Backup, Flapping, LogRotation, Maintenance, Watchdog
from incident.rules.matchers import Matcher, MatcherError, MatchOp, parse_matchers
from incident.rules.remediations import (
    CircuitBreakerPolicy,
    CommandRemediation,
    HttpRemediation,
    PythonRemediation,
    RemediationRule,
    RetryPolicy,
)
from incident.rules.routes import Destinations, Route, require_routing_keys, unset_routing_keys
from incident.rules.schemas import Rules, SeverityRule, SeverityRules
from incident.rules.severity import Severity

__all__ = [
    "Backup",
    "CircuitBreakerPolicy",
    "CommandRemediation",
    "Destinations",
    "Escalation",
    "EscalationPolicy",
    "Flapping",
    "HttpRemediation",
    "LogRotation",
    "Maintenance",
    "MatchOp",
    "Matcher",
    "MatcherError",
    "PythonRemediation",
    "RemediationRule",
    "RetryPolicy",
    "Route",
    "Rules",
    "RulesError",
    "Severity",
    "SeverityRule",
    "SeverityRules",
    "Watchdog",
    "load_rules",
    "parse_matchers",
    "parse_rules",
    "require_routing_keys",
    "unset_routing_keys",
]
