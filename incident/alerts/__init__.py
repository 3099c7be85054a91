"""Alertmanager webhook payloads, parsed and normalised (pure functions)."""
