"""Remediation: actions, retry policy and the shared circuit breaker."""
