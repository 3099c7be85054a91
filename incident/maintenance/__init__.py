"""Maintenance on beat: retention, stale incidents, log rotation, backups, Watchdog."""
