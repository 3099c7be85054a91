"""incident: an incident-response worker for Prometheus Alertmanager."""

__version__ = "0.1.0"
