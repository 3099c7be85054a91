"""The ``maintenance:`` section: retention, reopening, flapping, logs, backups, Watchdog."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from incident.rules.schema_types import (
    ByteSize,
    Duration,
    NonEmptyStr,
    PositiveInt,
    StrictModel,
    rule_error,
)
from incident.rules.severity import Severity

# Field names as Celery's `crontab()` takes them, with the ranges it accepts
# (it refuses 7 for Sunday, so we do too: better now than when beat starts).
_CRON_FIELDS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day_of_month", 1, 31, ()),
    (
        "month_of_year",
        1,
        12,
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
    ),
    ("day_of_week", 0, 6, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
)
_CRON_ITEM = re.compile(r"(?:\*|(?P<start>\w+)(?:-(?P<end>\w+))?)(?:/(?P<step>\d+))?")


def _cron_value(text: str, low: int, high: int, names: tuple[str, ...], field: str) -> int:
    if text.lower() in names:
        return names.index(text.lower()) + low
    if not text.isdigit() or not low <= int(text) <= high:
        raise ValueError(f"{field} must be {low}-{high}, got {text!r}")
    return int(text)


def _check_cron_field(text: str, low: int, high: int, names: tuple[str, ...], field: str) -> None:
    for item in text.split(","):
        parts = _CRON_ITEM.fullmatch(item)
        if parts is None:
            raise ValueError(f"{field} has an invalid item {item!r}")
        if parts["step"] is not None and int(parts["step"]) == 0:
            raise ValueError(f"{field} has a zero step in {item!r}")
        if parts["start"] is None:
            continue
        start = _cron_value(parts["start"], low, high, names, field)
        if parts["end"] is not None and _cron_value(parts["end"], low, high, names, field) < start:
            raise ValueError(f"{field} has a backwards range {item!r}")


def _check_cron(schedule: str) -> str:
    fields = schedule.split()
    if len(fields) != len(_CRON_FIELDS):
        raise rule_error(
            f"schedule {schedule!r} must have 5 fields "
            f"(minute hour day-of-month month day-of-week), got {len(fields)}"
        )
    for text, (field, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        try:
            _check_cron_field(text, low, high, names, field)
        except ValueError as error:
            raise rule_error(f"schedule {schedule!r}: {error}") from None
    return schedule


class Flapping(StrictModel):
    """``transitions`` firing/resolved changes ``within`` a window mark a group flapping."""

    transitions: Annotated[int, Field(strict=True, ge=2)] = 4
    within: Duration = timedelta(hours=1)


class LogRotation(StrictModel):
    every: Duration = timedelta(hours=1)
    # A live log this large is rotated at the next size check, whatever `every`
    # says: a flood (of 401s, say) must not fill the disk within one period.
    max_size: ByteSize = 100 * 1024 * 1024
    compress_after: Duration = timedelta(days=1)
    delete_after: Duration = timedelta(days=30)

    @model_validator(mode="after")
    def _compress_before_delete(self) -> LogRotation:
        if self.delete_after < self.compress_after:
            raise rule_error(
                "delete_after must not be shorter than compress_after", at=("delete_after",)
            )
        return self


class Backup(StrictModel):
    schedule: Annotated[str, Field(strict=True), AfterValidator(_check_cron)] = "0 2 * * *"
    keep: PositiveInt = 7
    # A newest backup older than this is an alert in itself.
    max_age: Duration = timedelta(hours=26)
    verify: Literal["restore", "list"] = "restore"
    # Of the internal incident a failed backup or verification opens.
    severity: Severity = Severity.SEV2

    @property
    def crontab_fields(self) -> dict[str, str]:
        """Keyword arguments for ``celery.schedules.crontab``."""
        return dict(zip((name for name, *_ in _CRON_FIELDS), self.schedule.split(), strict=True))


class Watchdog(StrictModel):
    """Alertmanager's always-firing alert; silence longer than ``max_silence`` opens an incident."""

    alertname: NonEmptyStr = "Watchdog"
    max_silence: Duration = timedelta(minutes=10)
    severity: Severity = Severity.SEV1


class Maintenance(StrictModel):
    retention: Duration = timedelta(days=90)
    stale_after: Duration = timedelta(hours=24)
    reopen_window: Duration = timedelta(minutes=30)
    flapping: Flapping = Field(default_factory=Flapping)
    log_rotation: LogRotation = Field(default_factory=LogRotation)
    backup: Backup = Field(default_factory=Backup)
    # Off unless configured: with no Watchdog alert routed here, a default
    # dead-man's switch would page SEV1 ten minutes after every start.
    watchdog: Watchdog | None = None
