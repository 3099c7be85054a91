"""Running remediations: one run per incident opening, attempts with backoff, shared breakers.

A run lives in ``remediation_runs``. Each attempt is a task message carrying
``(run_id, attempt)`` and is claimed by a conditional update (``pending`` with
``attempts = attempt - 1`` becomes ``running`` with ``attempts = attempt``), so
a redelivered or duplicated message finds nothing to claim. The action runs
outside any transaction; its outcome is written only if the run is still the
one this worker claimed. A worker that dies mid-attempt leaves a lease that
runs out; the sweeper then counts the attempt as failed and moves the run on.

Nothing here imports Celery: attempts are outbox messages, sent after commit.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import redis
import structlog
from sqlalchemy import and_, or_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from incident.config import incident_page_url
from incident.db import session_scope
from incident.incidents import outbox
from incident.incidents.events import NO_SUBSCRIBERS, EventBus
from incident.incidents.lifecycle import SYSTEM, Lifecycle, announced_opening
from incident.incidents.models import Incident, IncidentStatus, TimelineEntry, TimelineKind
from incident.metrics import count
from incident.queues import REMEDIATE
from incident.remediation import actions
from incident.remediation.breaker import CircuitBreakers, Permit, Verdict, redis_key
from incident.remediation.models import RemediationRun, RunStatus
from incident.rules import Rules, Severity
from incident.rules.remediations import RemediationRule
from incident.rules.templates import RenderError, TemplateValues, render

log = structlog.get_logger(__name__)

# Beyond the action's own timeout: Celery's soft limit, then its hard limit, then
# the lease. Each ends the attempt before the next takes over.
SOFT_LIMIT_MARGIN = 15.0
HARD_LIMIT_MARGIN = 30.0
LEASE_MARGIN = 60.0
# A pending attempt's message is sent through the outbox, so it can only be
# lost with the broker's data; one this late is sent again, and stamped, so a
# queue backed up for less than this never gets a second copy.
OVERDUE = timedelta(minutes=15)
# Retries due later than this wait as rows for the sweeper, not as broker ETAs.
BROKER_DELAY_LIMIT = 60.0
_RECORD_LIMIT = 4096
# Beat's sweep runs every few seconds; expired breakers need dropping far less often.
PRUNE_EVERY = 300.0


RUN_TASK = "incident.remediation.run"


@dataclass(frozen=True)
class Attempt:
    """A message to send: run ``run_id``'s attempt ``attempt``."""

    run_id: int
    attempt: int
    countdown: float
    timeout: float

    @property
    def soft_time_limit(self) -> float:
        return self.timeout + SOFT_LIMIT_MARGIN

    @property
    def time_limit(self) -> float:
        return self.timeout + HARD_LIMIT_MARGIN

    def message(self) -> outbox.Message:
        return outbox.Message(
            RUN_TASK, {"run_id": self.run_id, "attempt": self.attempt}, REMEDIATE,
            countdown=self.countdown,
            options={"soft_time_limit": self.soft_time_limit, "time_limit": self.time_limit},
        )


@dataclass
class Step:
    """What one attempt (or one sweep) did: the run's status, the attempts it sent."""

    status: str | None = None
    next_attempts: list[Attempt] = field(default_factory=list)


def backoff(rule: RemediationRule, failed_attempts: int) -> float:
    """Exponential with "equal jitter": each delay lies in the upper half of its step.

    Full jitter could make a later delay shorter than an earlier one; this keeps
    the delays growing while still spreading a fleet's retries apart.
    """
    base = rule.retry.backoff.total_seconds()
    ceiling = min(rule.retry.max_backoff.total_seconds(), base * 2 ** (failed_attempts - 1))
    return ceiling / 2 + random.random() * ceiling / 2


def breaker_target(rule: RemediationRule, incident: Incident, public_url: str) -> str:
    """The rendered ``circuit_breaker.key`` (empty: one breaker for the remediation)."""
    if rule.circuit_breaker.key is None:
        return ""
    values = TemplateValues(
        labels=incident.labels,
        incident={
            "id": incident.id, "key": incident.key, "severity": incident.severity,
            "title": incident.title, "url": incident_page_url(public_url, incident.id),
        },
        remediation={"name": rule.name},
    )
    return render(rule.circuit_breaker.key, values)


class RemediationScheduler:
    """Subscriber: a run for each matching remediation when an incident opens.

    On a reopening, only those whose rule says ``run_on_reopen``. None while the
    incident is in maintenance: the end of it counts as the opening it held back. The run and
    its first attempt's message commit with the opening.
    """

    def __init__(self, rules: Rules, public_url: str) -> None:
        self.rules = rules
        self.public_url = public_url

    def __call__(
        self, session: Session, incident: Incident, entries: Sequence[TimelineEntry],
        now: datetime,
    ) -> None:
        if not self.rules.remediations or incident.in_maintenance:
            return
        for entry in entries:
            kind = announced_opening(entry.kind, entry.detail)
            if kind is None:
                continue
            for rule in self.rules.matching_remediations(incident.labels):
                if kind is TimelineKind.REOPENED and not rule.run_on_reopen:
                    continue
                self._schedule(session, incident, entry, rule, now)

    def _schedule(
        self, session: Session, incident: Incident, entry: TimelineEntry, rule: RemediationRule,
        now: datetime,
    ) -> None:
        try:
            target = breaker_target(rule, incident, self.public_url)
        except RenderError as exc:
            # The label the key names is missing: one breaker for all such incidents.
            log.warning("breaker key not rendered", remediation=rule.name, error=str(exc))
            target = ""
        run_id = session.scalar(
            insert(RemediationRun)
            .values(
                incident_id=incident.id, step=entry.id, name=rule.name, action=rule.action,
                status=RunStatus.PENDING, attempts=0, max_attempts=rule.retry.attempts,
                breaker_key=target, created_at=now, next_attempt_at=now,
            )
            .on_conflict_do_nothing(index_elements=["incident_id", "name", "step"])
            .returning(RemediationRun.id)
        )
        if run_id is not None:
            attempt = Attempt(run_id, 1, 0.0, actions.attempt_timeout(rule))
            outbox.put(session, attempt.message(), now=now)


class RemediationEngine:
    """Runs attempts against the rules a worker loaded and the fleet's breakers."""

    def __init__(
        self,
        rules: Rules,
        breakers: CircuitBreakers,
        *,
        events: EventBus = NO_SUBSCRIBERS,
        public_url: str = "http://127.0.0.1:8080",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.rules = rules
        self.breakers = breakers
        self.events = events
        self.public_url = public_url
        self.clock = clock
        self._next_prune = 0.0

    def rule(self, name: str) -> RemediationRule | None:
        return next((each for each in self.rules.remediations if each.name == name), None)

    def run_attempt(self, run_id: int, attempt: int) -> Step:
        """Claim, run and record one attempt; a message for a taken attempt does nothing.

        The breaker counts runs, not attempts: a run's retries are its own
        business, and only its final outcome (success, or failure after its
        last attempt) moves the breaker. Otherwise ``attempts: 4`` with
        ``failure_threshold: 3`` would trip on one incident and never make
        its fourth try. A half-open trial is one attempt, with no retry.
        """
        claimed = self._claim(run_id, attempt)
        if claimed is None:
            return Step()
        rule, context, target = claimed
        key = redis_key(rule.name, target)
        token = str(run_id)
        timeout = actions.attempt_timeout(rule)
        reset_after = rule.circuit_breaker.reset_after.total_seconds()
        try:
            permit = self.breakers.acquire(
                key, token=token, trial_lease=timeout + LEASE_MARGIN, reset_after=reset_after
            )
        except redis.RedisError:
            # Nothing ran: hand the attempt back, so the task's retry (or, after
            # its last, the sweeper) runs it rather than a lease running out.
            self._unclaim(run_id, attempt)
            raise
        if not permit.allowed:
            return self._skip(run_id, attempt, rule, permit)
        outcome = actions.perform(rule, context, timeout=timeout)
        trial = permit.verdict is Verdict.TRIAL
        final = (
            outcome.succeeded or not outcome.retryable or trial or attempt >= rule.retry.attempts
        )
        # The outcome first: it happened, whatever Redis says next.
        try:
            return self._finish_attempt(run_id, attempt, rule, outcome, retry=not final)
        finally:
            self._tell_breaker(key, target, token, rule, outcome, trial=trial, final=final)

    def _tell_breaker(
        self, key: str, target: str, token: str, rule: RemediationRule,
        outcome: actions.ActionOutcome, *, trial: bool, final: bool,
    ) -> None:
        """Best effort: a breaker that misses one outcome is late by one run, not wrong."""
        try:
            if final and outcome.reached_target:
                self.breakers.record(
                    key, succeeded=outcome.succeeded, token=token,
                    threshold=rule.circuit_breaker.failure_threshold,
                    reset_after=rule.circuit_breaker.reset_after.total_seconds(),
                    remediation=rule.name, target=target,
                )
            elif trial:
                self.breakers.release_trial(key, token=token)
        except redis.RedisError as exc:
            log.warning("circuit breaker not updated: Redis unavailable", remediation=rule.name,
                        breaker_key=target, succeeded=outcome.succeeded,
                        error=f"{type(exc).__name__}: {exc}")

    def _unclaim(self, run_id: int, attempt: int) -> None:
        with session_scope() as session:
            run = self._owned(session, run_id, attempt)
            if run is None:
                return
            run.status = RunStatus.PENDING
            run.attempts = attempt - 1
            run.lease_until = None
            run.next_attempt_at = self.clock()
            if attempt == 1:
                run.started_at = None
        log.warning("remediation attempt put back: circuit breaker unavailable",
                    run_id=run_id, attempt=attempt)

    def _claim(self, run_id: int, attempt: int):
        now = self.clock()
        with session_scope() as session:
            run = session.get(RemediationRun, run_id, with_for_update=True)
            if run is None or run.status != RunStatus.PENDING or run.attempts != attempt - 1:
                log.info("remediation attempt already taken", run_id=run_id, attempt=attempt)
                return None
            rule = self.rule(run.name)
            incident = session.get(Incident, run.incident_id)
            if rule is None:
                # The rules changed since the run was scheduled: say so, run nothing.
                self._close(session, run, RunStatus.FAILED, now,
                            error=f"remediation {run.name!r} is no longer in the rules file")
                return None
            if incident.status == IncidentStatus.RESOLVED:
                self._conclude(session, run, rule, RunStatus.CANCELLED,
                               "incident resolved before this attempt")
                return None
            timeout = actions.attempt_timeout(rule)
            run.status = RunStatus.RUNNING
            run.attempts = attempt
            run.started_at = run.started_at or now
            run.next_attempt_at = None
            run.lease_until = now + timedelta(seconds=timeout + LEASE_MARGIN)
            context = actions.RemediationContext.create(
                rule, incident_id=incident.id, incident_key=incident.key, title=incident.title,
                severity=incident.severity, status=incident.status, labels=incident.labels,
                url=incident_page_url(self.public_url, incident.id), attempt=attempt,
            )
            return rule, context, run.breaker_key

    def _skip(self, run_id: int, attempt: int, rule: RemediationRule, permit: Permit) -> Step:
        error = f"circuit breaker open until {permit.retry_at.isoformat(timespec='seconds')}"
        with session_scope() as session:
            run = self._owned(session, run_id, attempt)
            if run is None:
                return Step()
            run.attempts = attempt - 1
            if run.last_error:
                error = f"{error}; last error: {run.last_error}"
            return self._conclude(session, run, rule, RunStatus.SKIPPED_CIRCUIT_OPEN, error)

    def _finish_attempt(
        self, run_id: int, attempt: int, rule: RemediationRule, outcome: actions.ActionOutcome,
        *, retry: bool,
    ) -> Step:
        with session_scope() as session:
            run = self._owned(session, run_id, attempt)
            if run is None:
                log.warning("remediation outcome dropped: the attempt's lease ran out",
                            run_id=run_id, attempt=attempt, succeeded=outcome.succeeded)
                return Step()
            return self.record_outcome(session, run, rule, outcome, retry=retry)

    def record_outcome(
        self, session: Session, run: RemediationRun, rule: RemediationRule,
        outcome: actions.ActionOutcome, *, retry: bool = True,
    ) -> Step:
        run.output = _trim(outcome.output) or run.output
        if outcome.succeeded:
            run.last_error = None
            return self._conclude(session, run, rule, RunStatus.SUCCEEDED, None)
        run.last_error = _trim(outcome.error or "failed")
        incident = session.get(Incident, run.incident_id, with_for_update=True)
        if incident.status == IncidentStatus.RESOLVED:
            return self._conclude(session, run, rule, RunStatus.CANCELLED,
                                  f"incident resolved; last error: {run.last_error}")
        if retry and outcome.retryable and run.attempts < run.max_attempts:
            now = self.clock()
            delay = backoff(rule, run.attempts)
            run.status = RunStatus.PENDING
            run.lease_until = None
            run.next_attempt_at = now + timedelta(seconds=delay)
            step = Step(status=run.status)
            with Lifecycle(session, events=self.events, now=now) as life:
                life.remediation(incident, name=run.name, attempts=run.attempts, status="retrying",
                                 error=run.last_error, retry_in=round(delay, 3), announce=False)
            # A long wait is a row polled by beat, not a message held by a
            # worker: the broker would redeliver one held past its visibility timeout.
            run.wake_by_poll = delay > BROKER_DELAY_LIMIT
            if not run.wake_by_poll:
                self._send(session, step, Attempt(
                    run.id, run.attempts + 1, delay, actions.attempt_timeout(rule)
                ))
            log.info("remediation attempt failed; retrying", remediation=run.name,
                     attempt=run.attempts, countdown=round(delay, 2), error=run.last_error)
            return step
        return self._conclude(session, run, rule, RunStatus.FAILED, run.last_error)

    def _conclude(
        self, session: Session, run: RemediationRun, rule: RemediationRule | None,
        status: RunStatus, error: str | None,
    ) -> Step:
        """Finish the run, record it on the timeline, and apply ``on_failure``."""
        now = self.clock()
        self._close(session, run, status, now, error=error)
        incident = session.get(Incident, run.incident_id, with_for_update=True)
        policy = rule.on_failure if rule is not None else "notify"
        step = Step(status=run.status)
        failed = status in (RunStatus.FAILED, RunStatus.SKIPPED_CIRCUIT_OPEN)
        announce = policy != "ignore" and status != RunStatus.CANCELLED
        with Lifecycle(session, events=self.events, now=now) as life:
            life.remediation(incident, name=run.name, attempts=run.attempts, status=status.value,
                             error=run.last_error, announce=announce)
            if failed and policy == "escalate" and incident.status != IncidentStatus.RESOLVED:
                # One severity up (unless already SEV1), and escalate now.
                reason = f"remediation {run.name} {run.status}"
                life.raise_severity(incident, SYSTEM, Severity(incident.severity).raised(),
                                    reason=reason)
                life.escalate(incident, SYSTEM, reason=reason)
        log.info("remediation " + status.value, remediation=run.name, attempts=run.attempts,
                 error=run.last_error)
        count("incident_remediations", remediation=run.name, outcome=status.value)
        return step

    @staticmethod
    def _send(session: Session, step: Step, attempt: Attempt) -> None:
        outbox.put(session, attempt.message())
        step.next_attempts.append(attempt)

    @staticmethod
    def _close(
        session: Session, run: RemediationRun, status: RunStatus, now: datetime, *,
        error: str | None,
    ) -> None:
        run.status = status
        run.last_error = _trim(error) if error else None
        run.finished_at = now
        run.lease_until = None
        run.next_attempt_at = None

    @staticmethod
    def _owned(session: Session, run_id: int, attempt: int) -> RemediationRun | None:
        return session.scalars(
            select(RemediationRun)
            .where(RemediationRun.id == run_id, RemediationRun.status == RunStatus.RUNNING,
                   RemediationRun.attempts == attempt)
            .with_for_update()
        ).one_or_none()

    def sweep(self, *, limit: int = 200) -> Step:
        """Due long waits and overdue attempts are sent; running attempts past their lease failed."""
        self._prune_breakers()
        now = self.clock()
        step = Step()
        with session_scope() as session:
            due = session.scalars(
                select(RemediationRun)
                .where(
                    RemediationRun.status == RunStatus.PENDING,
                    or_(
                        and_(RemediationRun.wake_by_poll, RemediationRun.next_attempt_at <= now),
                        RemediationRun.next_attempt_at < now - OVERDUE,
                    ),
                )
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            for run in due:
                # Stamped: the next sweep leaves it alone for another OVERDUE.
                run.wake_by_poll = False
                run.next_attempt_at = now
                rule = self.rule(run.name)
                timeout = actions.attempt_timeout(rule) if rule else actions.DEFAULT_TIMEOUT
                self._send(session, step, Attempt(run.id, run.attempts + 1, 0.0, timeout))
            lost = session.scalars(
                select(RemediationRun)
                .where(RemediationRun.status == RunStatus.RUNNING,
                       RemediationRun.lease_until < now)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            for run in lost:
                rule = self.rule(run.name)
                error = f"worker lost during attempt {run.attempts}"
                log.warning("remediation attempt lost", remediation=run.name, run_id=run.id)
                if rule is None:
                    self._close(session, run, RunStatus.FAILED, now, error=error)
                    continue
                outcome = actions.ActionOutcome(
                    succeeded=False, error=error, retryable=True, reached_target=False
                )
                done = self.record_outcome(session, run, rule, outcome)
                step.next_attempts += done.next_attempts
        return step

    def _prune_breakers(self) -> None:
        if time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + PRUNE_EVERY
        try:
            dropped = self.breakers.prune()
        except redis.RedisError as exc:
            log.warning("expired circuit breakers not pruned: Redis unavailable",
                        error=f"{type(exc).__name__}: {exc}")
            return
        if dropped:
            log.info("expired circuit breakers forgotten", count=dropped)


def _trim(text: str | None) -> str | None:
    if text is None or len(text) <= _RECORD_LIMIT:
        return text
    half = _RECORD_LIMIT // 2
    return f"{text[:half]}\n… {len(text) - _RECORD_LIMIT} characters trimmed …\n{text[-half:]}"

