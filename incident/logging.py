"""Structured logging for every incident process, with secrets scrubbed.

structlog hands its events to the standard library, and one
``ProcessorFormatter`` per root handler renders both those events and the plain
``logging`` records of Celery, kombu and uvicorn, so every line (ours or a
library's) carries the bound context, is scrubbed of secrets, and has one
format: JSON (or structlog's console format) on stderr, plus JSON lines in
``{log_dir}/{process}.log`` when a log directory is configured.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import os
import re
import stat
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from incident.config import ConfigurationError, Settings, get_settings
from incident.tracing import current_ids

REDACTED = "***"

# Libraries that log every request at INFO; their warnings still come through.
NOISY_LOGGERS = ("httpx", "httpcore", "urllib3", "watchfiles")

UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")

# Marks the root handlers this module installed, so reconfiguring replaces them
# without touching anyone else's (pytest's capture handler, for one).
_OUR_HANDLER = "_incident_logging_handler"

# What may name a process, and so its log file; log rotation matches file names by it.
PROCESS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

# Logs hold incident details and client addresses: the group may read them
# (a log shipper), others may not. A stricter umask still narrows it further.
LOG_FILE_MODE = 0o640

_configured = False
_celery_process = "worker"
# Context as it was before each running task, restored when the task ends.
_context_before_task: dict[str, dict[str, Any]] = {}


class SecretScrubber:
    """A structlog processor that replaces secrets in every string of an event.

    It redacts the configured secrets (and their URL-, JSON- and repr-escaped
    spellings), the password of any ``scheme://user:password@host`` URL, and the
    credentials after ``Bearer``, recursively through dicts, lists and tuples.
    Other objects are rendered with ``repr`` first, as the renderers would, so a
    secret inside one cannot slip past.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        spellings: set[str] = set()
        for secret in secrets:
            if secret:
                spellings.update(_spellings(secret))
        # Longest first, so a secret that contains another is redacted whole.
        literal = "|".join(re.escape(s) for s in sorted(spellings, key=len, reverse=True))
        known = f"{literal}|" if literal else ""
        # Within a bearer token or a URL password a known secret is tried first,
        # so a secret holding a delimiter is still redacted whole.
        bearer = rf"(?P<bearer>\b(?i:bearer)\s+)(?:{known}[^\s'\",;\\]+)"
        # Bounded runs: a label value of 16 KiB reaches log lines, and unbounded
        # ones would make each line cost time quadratic in its length.
        url_password = (
            rf"(?P<userinfo>\b[A-Za-z][A-Za-z0-9+.-]{{0,31}}://[^\s/?#@:'\"]{{0,256}}:)"
            rf"(?:{known}[^\s/?#'\"]{{1,256}})(?=@)"
        )
        alternatives = [bearer, url_password] + ([literal] if literal else [])
        self._pattern = re.compile("|".join(alternatives))

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretScrubber:
        secrets = list(settings.secret_values())
        for name in ("database_url", "broker_url", "redis_url"):
            secrets.extend(_url_passwords(getattr(settings, name, None)))
        return cls(secrets)

    def scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._pattern.sub(self._replace, value)
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if isinstance(value, dict):
            return {self.scrub(k): self.scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.scrub(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self.scrub(v) for v in value)
        rendered = value.__structlog__() if hasattr(value, "__structlog__") else repr(value)
        return self.scrub(rendered)

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        return {key: self.scrub(value) for key, value in event_dict.items()}

    @staticmethod
    def _replace(match: re.Match[str]) -> str:
        prefix = match.group("bearer") or match.group("userinfo") or ""
        return prefix + REDACTED


def _spellings(secret: str) -> set[str]:
    return {
        secret,
        quote(secret, safe=""),
        json.dumps(secret)[1:-1],
        repr(secret)[1:-1],
    }


def _url_passwords(url: str | None) -> list[str]:
    """The password of each URL in ``url`` (kombu accepts ``;``-separated failover URLs)."""
    passwords: list[str] = []
    for part in (url or "").split(";"):
        try:
            password = urlsplit(part.strip()).password
        except ValueError:
            continue
        if password:
            passwords.extend({password, unquote(password)})
    return passwords


def _drop_color_message(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    # uvicorn passes an ANSI-coloured copy of each message as `extra`.
    event_dict.pop("color_message", None)
    return event_dict


def _timestamp_from_record(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    # The record's own time, so the stderr and file copies of a line agree.
    created = datetime.fromtimestamp(event_dict["_record"].created, tz=UTC)
    event_dict["timestamp"] = created.isoformat().replace("+00:00", "Z")
    return event_dict


def _add_pid(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    # Several processes append to one file (a worker and its pool children,
    # uvicorn's workers); the pid tells their lines apart.
    event_dict["pid"] = os.getpid()
    return event_dict


def add_trace_ids(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """``trace_id`` and ``span_id`` of the current span, when one is being traced."""
    ids = current_ids()
    if ids is not None:
        event_dict.setdefault("trace_id", ids[0])
        event_dict.setdefault("span_id", ids[1])
    return event_dict


def _context_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        add_trace_ids,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
    ]


def _formatter(
    renderer: Processor, scrubber: SecretScrubber, *, with_pid: bool = False
) -> structlog.stdlib.ProcessorFormatter:
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            *_context_processors(),
            _timestamp_from_record,
            structlog.stdlib.ExtraAdder(),
            _drop_color_message,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Exceptions become text here so the scrubber sees the traceback.
            structlog.processors.format_exc_info,
            scrubber,
            *([_add_pid] if with_pid else []),
            renderer,
        ],
    )


class LogFileHandler(logging.handlers.WatchedFileHandler):
    """Appends to ``{process}.log``, reopening it when rotation renames it (a stat per line).

    The file is created with ``LOG_FILE_MODE`` rather than the umask's default,
    and one found with wider permissions (written by an older version) is
    narrowed when opened.
    """

    def _open(self):  # type: ignore[no-untyped-def]
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_FILE_MODE)
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            if mode & ~LOG_FILE_MODE:
                # Another user's file on a shared volume: theirs to fix, not a reason to stop.
                with contextlib.suppress(PermissionError):
                    os.fchmod(fd, mode & LOG_FILE_MODE)
            return open(fd, "a", encoding=self.encoding, errors=self.errors)
        except BaseException:
            os.close(fd)
            raise


def _level(name: str) -> int:
    level = logging.getLevelName(name.strip().upper())
    if isinstance(level, int):
        return level
    if name.strip().isdigit():
        return int(name)
    raise ConfigurationError(f"INCIDENT_LOG_LEVEL {name!r} is not a logging level")


def configure_logging(settings: Settings, *, process: str) -> None:
    """Route structlog and stdlib logging through one scrubbed pipeline.

    Safe to call again: the handlers it installed before are replaced, not
    duplicated. ``process`` (``api``, ``worker``, ``beat``, ``dev``, ``cli``)
    names the log file, ``{settings.log_dir}/{process}.log``.
    """
    global _configured
    if not PROCESS_NAME.fullmatch(process):
        raise ValueError(f"process name {process!r} cannot name a log file")
    level = _level(settings.log_level)
    scrubber = SecretScrubber.from_settings(settings)

    structlog.configure(
        processors=[
            *_context_processors(),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.stdlib.filter_by_level,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Uncached, so a logger first used before configuration (at import time,
        # say) still follows the configuration made afterwards.
        cache_logger_on_first_use=False,
    )

    json_renderer = structlog.processors.JSONRenderer()
    stderr = logging.StreamHandler(sys.stderr)
    if settings.log_format == "console":
        stderr_renderer: Processor = structlog.dev.ConsoleRenderer(
            colors=bool(getattr(sys.stderr, "isatty", lambda: False)())
        )
    else:
        stderr_renderer = json_renderer
    stderr.setFormatter(
        _formatter(stderr_renderer, scrubber, with_pid=settings.log_format == "json")
    )
    handlers: list[logging.Handler] = [stderr]

    if settings.log_dir is not None:
        settings.log_dir.mkdir(parents=True, exist_ok=True)
        file_handler = LogFileHandler(settings.log_dir / f"{process}.log", encoding="utf-8")
        file_handler.setFormatter(_formatter(json_renderer, scrubber, with_pid=True))
        handlers.append(file_handler)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OUR_HANDLER, False)]:
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        setattr(handler, _OUR_HANDLER, True)
        root.addHandler(handler)
    root.setLevel(level)

    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(
            logging.WARNING if level >= logging.INFO else logging.NOTSET
        )
    _configured = True


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    """A structlog logger named ``name``, else after the calling module."""
    if name is None:
        name = sys._getframe(1).f_globals.get("__name__", "incident")
    return structlog.stdlib.get_logger(name)


def uvicorn_log_config() -> dict[str, Any]:
    """A dictConfig for ``uvicorn.run(log_config=...)``.

    uvicorn's loggers keep no handlers of their own and propagate to the root
    logger, so their lines go through the pipeline ``configure_logging`` set up.
    """
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {name: {"handlers": [], "propagate": True} for name in UVICORN_LOGGERS},
    }


def install_celery_logging(app: Any, *, process: str = "worker") -> None:
    """Keep Celery on our logging pipeline and bind each task's id and name.

    Connecting a receiver to ``celery.signals.setup_logging`` stops Celery from
    installing its own root handlers; the receiver configures logging from
    ``get_settings()`` (as ``process``) if nothing did before, e.g. under a
    bare ``celery -A incident.worker worker``, and honours a more verbose
    ``--loglevel``. While a task runs, ``task_id`` and ``task`` are bound in
    structlog's contextvars; when it ends, the context from before it is
    restored, so keys a task bound do not leak into the next one.

    Callers must set ``worker_hijack_root_logger=False`` in the app's
    configuration. This function also sets it (lazily, through
    ``app.conf.update``), so a forgotten setting cannot remove our handlers.
    Celery's signals are process-wide: the receivers serve every app.
    """
    from celery import signals

    global _celery_process
    _celery_process = process
    app.conf.update(worker_hijack_root_logger=False)
    signals.setup_logging.connect(
        _on_celery_setup_logging, weak=False, dispatch_uid="incident.logging.setup_logging"
    )
    signals.task_prerun.connect(
        _bind_task_context, weak=False, dispatch_uid="incident.logging.task_prerun"
    )
    signals.task_postrun.connect(
        _restore_context_after_task, weak=False, dispatch_uid="incident.logging.task_postrun"
    )


def _on_celery_setup_logging(loglevel: int | str | None = None, **_: Any) -> None:
    if not _configured:
        configure_logging(get_settings(), process=_celery_process)
    root = logging.getLogger()
    if isinstance(loglevel, int) and 0 < loglevel < root.level:
        root.setLevel(loglevel)


def _bind_task_context(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task_id is not None:
        _context_before_task[task_id] = structlog.contextvars.get_contextvars()
    structlog.contextvars.bind_contextvars(task_id=task_id, task=getattr(task, "name", None))


def _restore_context_after_task(task_id: str | None = None, **_: Any) -> None:
    before = _context_before_task.pop(task_id, None) if task_id is not None else None
    if before is None:
        structlog.contextvars.unbind_contextvars("task_id", "task")
        return
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(**before)
