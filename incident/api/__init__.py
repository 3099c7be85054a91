"""The HTTP door: receiver, incidents API, health and metrics (thin; logic lives in the domains)."""
