"""GET/POST /api/maintenance and DELETE /api/maintenance/{id}: maintenance windows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from incident.api.auth import require_api_token
from incident.api.errors import error_response, error_responses
from incident.api.incidents import DbSession
from incident.db import session_scope
from incident.incidents.lifecycle import API
from incident.integrations.alertmanager import AlertmanagerRefused, AlertmanagerUnavailable
from incident.windows import service
from incident.windows.schemas import WindowList, WindowOut, WindowRequest
from incident.windows.suppression import release

log = structlog.get_logger(__name__)

router = APIRouter(
    prefix="/api", dependencies=[Depends(require_api_token)], responses=error_responses(401, 422)
)

WindowId = Annotated[int, Path(ge=1, le=2**63 - 1)]
_ALERTMANAGER_ERRORS = error_responses(502, 503)
_NOT_FOUND = {404: {**error_responses(404)[404], "description": "no such maintenance window"}}
_ENDED = {409: {**error_responses(409)[409], "description": "the window has already ended"}}


@router.get("/maintenance", response_model=WindowList)
def list_windows(
    session: DbSession, limit: Annotated[int, Query(ge=1, le=service.SHOWN_MAX)] = 100
) -> WindowList:
    """Newest first: scheduled, active and ended windows."""
    now = datetime.now(UTC)
    rows = service.list_windows(session, limit=limit)
    return WindowList(items=[WindowOut.of(each, now) for each in rows])


@router.post(
    "/maintenance", status_code=201, response_model=WindowOut,
    responses={**error_responses(400), **_ALERTMANAGER_ERRORS},
)
def create_window(body: WindowRequest, request: Request) -> WindowOut | JSONResponse:
    context = request.app.state.context
    now = datetime.now(UTC)
    window = None
    try:
        with session_scope(context.engine) as session:
            window = service.create_window(session, body, API, now=now,
                                           alertmanager=context.alertmanager)
            shown = WindowOut.of(window, now)
    except service.WindowAlreadyEnded as exc:
        return error_response(422, "invalid window",
                              fields=[{"field": "body.ends_at", "message": str(exc)}])
    except (AlertmanagerUnavailable, AlertmanagerRefused) as exc:
        return _alertmanager_error(exc, "the silence was not made; no window was stored")
    except Exception:
        if window is not None:
            service.expire_silence_of(window, context.alertmanager)
        raise
    return shown


@router.delete(
    "/maintenance/{window_id}", response_model=WindowOut,
    responses={**_NOT_FOUND, **_ENDED, **_ALERTMANAGER_ERRORS},
)
def end_window(window_id: WindowId, request: Request) -> WindowOut | JSONResponse:
    """End a window now; its incidents still open are notified at once, as if just opened."""
    context = request.app.state.context
    now = datetime.now(UTC)
    try:
        with session_scope(context.engine) as session:
            shown = WindowOut.of(
                service.end_window(session, window_id, now=now, alertmanager=context.alertmanager),
                now,
            )
    except service.WindowNotFound:
        return error_response(404, f"no maintenance window {window_id}")
    except service.WindowAlreadyEnded as exc:
        return error_response(409, str(exc))
    except (AlertmanagerUnavailable, AlertmanagerRefused) as exc:
        return _alertmanager_error(exc, "its silence was not expired; the window goes on")
    # Beat's poll would release them within seconds; ending by hand should not wait for it.
    try:
        release(context.engine, context.events)
    except SQLAlchemyError as exc:
        log.warning("maintenance release left to beat's poll", error=str(exc))
    return shown


def _alertmanager_error(
    exc: AlertmanagerUnavailable | AlertmanagerRefused, consequence: str
) -> JSONResponse:
    # The whole message, with each URL tried, goes to the log; the answer says what happened.
    log.warning("alertmanager error", error=str(exc))
    if isinstance(exc, AlertmanagerUnavailable):
        return error_response(503, f"no Alertmanager answered in time: {consequence}")
    return error_response(502, f"Alertmanager refused: {exc.reason}; {consequence}")
