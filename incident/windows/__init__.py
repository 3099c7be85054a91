"""Maintenance windows: incidents opened under one are recorded and told to nobody until it ends."""
