"""Incidents: grouping, lifecycle, severity, and the incident store."""
