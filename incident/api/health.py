"""Liveness, readiness and metrics: no token needed (metrics optionally)."""

from __future__ import annotations

import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text

from incident.api import metrics as fleet_metrics
from incident.api.auth import require_metrics_token
from incident.api.errors import error_responses
from incident.db import engine_for
from incident.worker import app as celery_app

log = structlog.get_logger(__name__)
router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _database_answers(url: str) -> bool:
    try:
        with engine_for(url).connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        log.warning("readiness: the database does not answer", error=f"{type(exc).__name__}: {exc}")
        return False
    return True


def _broker_answers() -> bool:
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=2)
            # Redis connects lazily; a PING proves it answers. AMQP has connected by now.
            client = getattr(conn.default_channel, "client", None)
            if client is not None:
                client.ping()
    except Exception as exc:
        log.warning("readiness: the broker does not answer", error=f"{type(exc).__name__}: {exc}")
        return False
    return True


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """200 when the database and the broker answer, else 503 naming which did not.

    Anyone may ask, so the drivers' messages (host, port, role) go only to the log.
    """
    settings = request.app.state.settings
    failures = []
    if not await run_in_threadpool(_database_answers, settings.require_database_url()):
        failures.append("database")
    if not await run_in_threadpool(_broker_answers):
        failures.append("broker")
    if failures:
        return JSONResponse({"status": "unavailable", "failed": failures}, status_code=503)
    return JSONResponse({"status": "ready"})


@router.get(
    "/metrics",
    dependencies=[Depends(require_metrics_token)],
    response_class=Response,
    responses={
        200: {"description": "Prometheus text format",
              "content": {"text/plain; version=0.0.4": {"schema": {"type": "string"}}}},
        **error_responses(401),
    },
)
async def metrics(request: Request) -> Response:
    body, media_type = await run_in_threadpool(
        fleet_metrics.render, request.app.state.settings, request.app.state.rules
    )
    return Response(body, media_type=media_type)
