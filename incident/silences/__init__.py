"""Incident silences: an incident's alerts silenced in Alertmanager, and expired again."""
