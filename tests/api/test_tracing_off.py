"""Without OpenTelemetry's variables nothing is traced, nothing is wrapped, and webhooks work."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import httpx2
import pytest
import redis
import sqlalchemy
import wrapt
from celery import signals
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.httpx import HTTPX2ClientInstrumentor, HTTPXClientInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

from incident import tracing
from incident.api.app import create_app
from incident.config import get_settings
from tests.factories import alert, payload

OTEL_VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
)


@pytest.fixture
def no_otel(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("environ", "enabled"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "incident"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://tempo:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://tempo:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://tempo:4318", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://tempo:4318", "OTEL_SDK_DISABLED": "false"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://tempo:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
    ],
)
def test_only_an_otlp_endpoint_turns_tracing_on(environ, enabled):
    assert tracing.enabled_by_environment(environ) is enabled


def test_unknown_process_names_are_refused():
    with pytest.raises(ValueError, match="unknown process 'reciever'"):
        tracing.configure(process="reciever")


def _wrapped(owner, name: str) -> bool:
    # OpenTelemetry's instrumentations wrap with wrapt, in place.
    return isinstance(vars(owner)[name], wrapt.FunctionWrapper)


def test_without_an_endpoint_nothing_is_installed_and_a_webhook_is_still_queued(
    no_otel, clean_state, redis_client, webhook_headers
):
    prerun_before = list(signals.task_prerun.receivers)
    publish_before = list(signals.before_task_publish.receivers)
    app = create_app(get_settings())

    assert tracing.configure(process="worker") is False
    assert not tracing.is_configured()
    # No SDK provider: the API's proxy, whose spans record nothing.
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    for instrumentor in (
        FastAPIInstrumentor(), CeleryInstrumentor(), HTTPXClientInstrumentor(),
        HTTPX2ClientInstrumentor(), SQLAlchemyInstrumentor(), RedisInstrumentor(),
    ):
        assert not instrumentor.is_instrumented_by_opentelemetry, type(instrumentor).__name__
    assert not any("OpenTelemetry" in m.cls.__name__ for m in app.user_middleware)
    assert signals.task_prerun.receivers == prerun_before
    assert signals.before_task_publish.receivers == publish_before
    assert not _wrapped(sqlalchemy, "create_engine")
    assert not _wrapped(redis.Redis, "execute_command")
    assert not _wrapped(httpx.HTTPTransport, "handle_request")
    assert not _wrapped(httpx2.HTTPTransport, "handle_request")
    assert tracing.context_headers() == {}
    assert tracing.current_ids() is None

    with TestClient(app) as client:
        response = client.post(
            "/webhooks/alertmanager", headers=webhook_headers,
            content=json.dumps(payload(alert(severity="critical"))),
        )
    assert response.status_code == 202, response.text
    (message,) = [json.loads(raw) for raw in redis_client.lrange("page", 0, -1)]
    assert message["headers"]["task"] == "incident.incidents.ingest_webhook"
    assert "traceparent" not in message["headers"]


def test_an_otlp_protocol_other_than_http_is_named_in_a_warning(tmp_path):
    # A process of its own: configuring tracing sets the process's provider for good.
    env = {"PATH": "/usr/bin:/bin", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
           "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_BSP_SCHEDULE_DELAY": "60000"}
    done = subprocess.run(
        [sys.executable, "-c", "from incident import tracing; print(tracing.configure(process='cli'))"],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "only OTLP over HTTP" in done.stdout + done.stderr
    assert "OTEL_EXPORTER_OTLP_PROTOCOL" in done.stdout + done.stderr
    assert done.stdout.strip().endswith("True")
