"""The broker's queues. Separate queues keep a slow remediation or a
notification storm from delaying ingestion or paging: each can have its own workers."""

from __future__ import annotations

INGEST = "ingest"
PAGE = "page"
NOTIFY = "notify"
REMEDIATE = "remediate"
MAINTENANCE = "maintenance"

QUEUES = (INGEST, PAGE, NOTIFY, REMEDIATE, MAINTENANCE)
