"""Every Redis key and key prefix incident uses, in one place.

Features share one Redis, so each owns a prefix of its own here; two features
can never write each other's keys by choosing the same word.
"""

from __future__ import annotations

# Fleet-wide counters (metrics.py): one hash every process adds to.
METRICS = "incident:metrics"
# Latency histograms (metrics.py): cumulative bucket counts and sums, added to the same way.
METRICS_HISTOGRAMS = "incident:metrics:histograms"

# The repeat cache (incidents/repeats.py): group hash -> "revision:digest" of
# the last webhook applied to that group, so an unchanged re-send skips PostgreSQL.
REPEAT_CACHE = "incident:repeat:"
# When each group was last heard of (hash field = group hash), for the stale sweep.
GROUP_LAST_SEEN = "incident:group-last-seen"
# Webhooks ingestion gave up on, kept for `incident dead-letters replay`.
DEAD_LETTERS = "incident:dead-letters:ingest"

# Circuit breakers (remediation/breaker.py): one hash per breaker, and their registry.
BREAKER = "incident:breaker:"
BREAKER_REGISTRY = "incident:breakers"

# Slack: a token bucket per channel, and the flag that one digest flush is on its way.
SLACK_BUCKET = "incident:slack-bucket:"
SLACK_DIGEST_SCHEDULED = "incident:slack-digest-scheduled:"
# Storm mode (notifications/storm.py), per channel: its state (a hash), the
# incidents it lists, the SEV1/SEV2 incidents that kept a parent, the flag that
# its next edit is on its way, and the lock its edits run under; and the set of
# channels in a storm.
SLACK_STORM = "incident:slack-storm:"
SLACK_STORM_INCIDENTS = "incident:slack-storm-incidents:"
SLACK_STORM_PARENTS = "incident:slack-storm-parents:"
SLACK_STORM_SCHEDULED = "incident:slack-storm-scheduled:"
SLACK_STORM_LOCK = "incident:slack-storm-lock:"
SLACK_STORMS = "incident:slack-storms"

# The Watchdog: when it last arrived, and when its check first ran.
WATCHDOG_LAST_SEEN = "incident:watchdog:last-seen"
WATCHDOG_ARMED_AT = "incident:watchdog:armed-at"
# Internal alerts: when the episode in progress began, per alertname.
INTERNAL_EPISODE = "incident:internal:since:"
# When backup verification first ran without a backup.
BACKUP_ARMED_AT = "incident:backup:armed-at"

# Periodic jobs' locks (maintenance/locks.py).
LOCK = "incident:lock:"

# Slack interactivity (api/slack.py, interactions/): each signature seen in the
# last five minutes, so a replayed click is refused; and a click's response_url,
# kept briefly under a random key so that task arguments never carry it.
SLACK_SEEN_SIGNATURE = "incident:slack:seen-signature:"
SLACK_RESPONSE_URL = "incident:slack:response-url:"
