"""Traces with OpenTelemetry, configured only by its standard ``OTEL_*`` variables.

Off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``)
is set, and then free: no tracer provider, no instrumentation, nothing wrapped.
When on, ``configure(process=...)`` sets a tracer provider that sends spans over
OTLP/HTTP in batches, and installs OpenTelemetry's own instrumentations for
what the process uses: FastAPI (``instrument_app``) in the api; Celery in the
worker's pool processes and in beat; httpx (and httpx2, under PagerDuty's
client), SQLAlchemy and Redis everywhere. The exporter, the batching
(``OTEL_BSP_*``), the sampler (``OTEL_TRACES_SAMPLER``), the service name and
resource attributes all follow the SDK's own variables.

One webhook is one trace across processes. The receiver puts the request's
context in the ingest message's headers (``context_headers``); the Celery
instrumentation continues it in the worker and carries it on. A message that
goes through the outbox keeps the context it was written in, among its Celery
options (``headers``), and ``continued`` makes it current again when it is
published, whichever process or thread does that. Calls no instrumentation
covers (Slack's urllib client, SMTP, a remediation's action) are spans of their
own through ``client_span``.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import structlog
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

PROCESSES = ("api", "worker", "beat", "dev", "cli")

_lock = threading.Lock()
_configured_pid: int | None = None
_tracer: trace.Tracer | None = None


def enabled_by_environment(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the ``OTEL_*`` variables ask for traces: an OTLP endpoint, and the SDK not disabled."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return bool(
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    )


def is_configured() -> bool:
    """Whether this process sends traces (``configure`` ran here and found them asked for)."""
    # Checked on hot paths: without tracing it is one comparison, no system call.
    return _configured_pid is not None and _configured_pid == os.getpid()


def configure(*, process: str) -> bool:
    """Set up tracing for this process, if the environment asks for it; True if it did.

    Safe to call again: a process is configured once. ``process`` is ``api``,
    ``worker``, ``beat``, ``dev`` or ``cli``; it becomes the resource attribute
    ``incident.process``, and chooses the instrumentations.
    """
    global _configured_pid, _tracer
    if process not in PROCESSES:
        raise ValueError(f"unknown process {process!r}; expected one of {', '.join(PROCESSES)}")
    if not enabled_by_environment():
        return False
    with _lock:
        if _configured_pid == os.getpid():
            return True
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from incident import __version__

        # OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME are read here; the
        # service is "incident" unless they name it.
        resource = Resource.create({"service.version": __version__, "incident.process": process})
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: "incident"}))
        for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
            protocol = os.environ.get(name, "").strip()
            if protocol and protocol != "http/protobuf":
                structlog.get_logger(__name__).warning(
                    "only OTLP over HTTP (http/protobuf) is supported; sending that",
                    setting=name, value=protocol,
                )
                break
        provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        _instrument(process)
        _tracer = trace.get_tracer("incident", __version__)
        _configured_pid = os.getpid()
        return True


def _instrument(process: str) -> None:
    from opentelemetry.instrumentation.httpx import HTTPX2ClientInstrumentor, HTTPXClientInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    HTTPXClientInstrumentor().instrument()
    HTTPX2ClientInstrumentor().instrument()
    # The instrumentation declares SQLAlchemy < 2.1 and would skip our 2.1 in
    # silence; it hooks engine events SQLAlchemy 2.1 keeps, and the tests check its spans.
    SQLAlchemyInstrumentor().instrument(skip_dep_check=True)
    RedisInstrumentor().instrument()
    if process in ("worker", "beat", "dev"):
        # Not in the api: it publishes tasks by name without loading them, and the
        # Celery instrumentation ends its publish span only for a task it can look
        # up. The api's messages carry the request's context (context_headers).
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        CeleryInstrumentor().instrument()


def instrument_app(app: Any) -> None:
    """FastAPI's instrumentation on ``app``, when this process sends traces."""
    if is_configured():
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app)


def install_celery_hooks() -> None:
    """Configure tracing where Celery runs tasks and where beat sends them.

    In a prefork worker that is each pool process (``worker_process_init``): the
    batch processor's thread and the exporter's connections do not survive a
    fork. A worker whose pool does not fork (solo, threads) is configured in its
    own process (``worker_init``). The prefork parent only consumes and polls
    the outbox, and stays uninstrumented.
    """
    from celery import signals

    signals.worker_process_init.connect(
        _configure_pool_process, weak=False, dispatch_uid="incident.tracing.worker_process_init"
    )
    signals.worker_init.connect(
        _configure_worker, weak=False, dispatch_uid="incident.tracing.worker_init"
    )
    signals.beat_init.connect(
        _configure_beat, weak=False, dispatch_uid="incident.tracing.beat_init"
    )


def _configure_pool_process(**_: Any) -> None:
    configure(process="worker")


def _configure_worker(sender: Any = None, **_: Any) -> None:
    pool = getattr(sender, "pool_cls", None)
    name = pool if isinstance(pool, str) else getattr(pool, "__module__", "")
    if "prefork" not in str(name):
        configure(process="worker")


def _configure_beat(**_: Any) -> None:
    configure(process="beat")


def context_headers() -> dict[str, str]:
    """The current trace context as W3C headers (``traceparent``), or {} when not tracing."""
    if not is_configured():
        return {}
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers


@contextlib.contextmanager
def continued(headers: Mapping[str, str] | None) -> Iterator[None]:
    """Make the context carried in ``headers`` current, while publishing a message written in it."""
    if not headers or not is_configured():
        yield
        return
    token = otel_context.attach(propagate.extract(dict(headers)))
    try:
        yield
    finally:
        otel_context.detach(token)


def client_span(name: str, **attributes: str | int) -> contextlib.AbstractContextManager[Any]:
    """A client span around one outside call, when this process sends traces."""
    if _tracer is None or not is_configured():
        return contextlib.nullcontext()
    return _tracer.start_as_current_span(
        name, kind=trace.SpanKind.CLIENT, attributes=attributes
    )


def quiet() -> contextlib.AbstractContextManager[Any]:
    """No spans inside: for background housekeeping (the metrics flush) that is no one's trace."""
    if not is_configured():
        return contextlib.nullcontext()
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    return suppress_instrumentation()


def current_ids() -> tuple[str, str] | None:
    """The current span's trace and span ids, in hex, if one is recording here."""
    if not is_configured():
        return None
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return format(span_context.trace_id, "032x"), format(span_context.span_id, "016x")
