"""Each process's context: what its work needs, built once, from settings, and passed on.

The api builds one in ``create_app``; a worker builds one per pool process
on its first task. Domain code never reaches for settings or Redis by itself:
it is handed what it uses (rules, the event bus, notifiers, breakers). The
context also installs the process's way to the broker for the outbox.
"""

from __future__ import annotations

from functools import cached_property

import redis
from sqlalchemy import Engine

from incident.config import Settings
from incident.db import engine_for
from incident.incidents import outbox
from incident.incidents.events import EventBus
from incident.incidents.repeats import RepeatCache
from incident.integrations.alertmanager import Alertmanager
from incident.maintenance.internal import InternalAlerts
from incident.maintenance.jobs import MaintenanceJobs
from incident.notifications.digest import EMAIL_BURST, EMAIL_RATE, FLUSH_TASK, SlackDigests
from incident.notifications.storm import UPDATE_TASK, SlackStorms
from incident.notifications.ledger import NotificationPlanner
from incident.notifications.notifiers import Notifiers
from incident.notifications.planning import Channels
from incident.notifications.ratelimit import TokenBucket
from incident.queues import PAGE
from incident.remediation.breaker import CircuitBreakers
from incident.remediation.engine import RemediationEngine, RemediationScheduler
from incident.rules import Rules
from incident.sharedstate import redis_for
from incident.silences.service import Silences
from incident.windows.suppression import MaintenanceGate


class Context:
    def __init__(self, settings: Settings, rules: Rules, publish: outbox.Publish) -> None:
        self.settings = settings
        self.rules = rules
        self.publish = publish
        outbox.install_publisher(publish)

    @cached_property
    def redis(self) -> redis.Redis:
        return redis_for(self.settings.shared_redis_url)

    @property
    def engine(self) -> Engine:
        return engine_for(self.settings.require_database_url())

    @cached_property
    def channels(self) -> Channels:
        return Channels.from_settings(
            self.settings, routed_pagerduty=any(r.pagerduty for r in self.rules.routes)
        )

    @cached_property
    def events(self) -> EventBus:
        """Who reacts to incident events: the maintenance gate first (an incident it holds
        back is skipped by the rest), then notifications, then remediations."""
        return EventBus(
            MaintenanceGate(),
            NotificationPlanner(self.rules, self.channels, storms=self.storms.diverts),
            RemediationScheduler(self.rules, self.settings.public_url),
        )

    @cached_property
    def alertmanager(self) -> Alertmanager | None:
        """Alertmanager's silences API, or None without INCIDENT_ALERTMANAGER_URL."""
        urls = self.settings.alertmanager_urls
        return Alertmanager(urls) if urls else None

    @cached_property
    def silences(self) -> Silences:
        """Incident silences in Alertmanager; each call says so when none is configured."""
        return Silences(self.engine, self.alertmanager, self.events, self.settings.public_url)

    @cached_property
    def repeats(self) -> RepeatCache:
        return RepeatCache(self.redis)

    @cached_property
    def notifiers(self) -> Notifiers:
        return Notifiers.from_settings(
            self.settings,
            bucket=TokenBucket(self.redis),
            digests=SlackDigests(self.redis, self._schedule_digest_flush,
                                 mail_delay=self.settings.email_digest_seconds),
            email_bucket=TokenBucket(self.redis, rate=EMAIL_RATE, burst=EMAIL_BURST, reserve=0),
            storms=self.storms,
        )

    @cached_property
    def storms(self) -> SlackStorms:
        """Slack storm mode per channel, shared through Redis by every process."""
        return SlackStorms(self.redis, self._schedule_storm_update,
                           public_url=self.settings.public_url)

    @cached_property
    def breakers(self) -> CircuitBreakers:
        return CircuitBreakers(self.redis)

    @cached_property
    def remediations(self) -> RemediationEngine:
        return RemediationEngine(
            self.rules, self.breakers, events=self.events, public_url=self.settings.public_url
        )

    @cached_property
    def internal_alerts(self) -> InternalAlerts:
        return InternalAlerts(self.redis, self.settings.public_url)

    @cached_property
    def maintenance(self) -> MaintenanceJobs:
        return MaintenanceJobs(self.settings, self.rules, self.redis, self.internal_alerts,
                               self.repeats, self.events)

    def send_pending(self) -> int:
        """The outbox poll: what no fast path sent."""
        return outbox.send_pending(self.engine, self.publish)

    def _schedule_digest_flush(self, channel: str, countdown: float) -> None:
        self.publish(outbox.Message(FLUSH_TASK, {"channel": channel}, PAGE, countdown))

    def _schedule_storm_update(self, channel: str, countdown: float) -> None:
        self.publish(outbox.Message(UPDATE_TASK, {"channel": channel}, PAGE, countdown))
