"""POST and DELETE /api/incidents/{id}/silence: the incident's alerts silenced in
Alertmanager, or its silences expired."""

from __future__ import annotations

from collections.abc import Callable

import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from incident.api.auth import require_api_token
from incident.api.errors import error_response, error_responses
from incident.api.incidents import IncidentId, optional_body, shown_incident
from incident.db import session_scope
from incident.incidents.lifecycle import API
from incident.incidents.schemas import IncidentOut
from incident.integrations.alertmanager import AlertmanagerRefused, AlertmanagerUnavailable
from incident.silences.schemas import SilenceIn
from incident.silences.service import NothingToSilence, Silences, SilencingNotConfigured

log = structlog.get_logger(__name__)

router = APIRouter(
    prefix="/api", dependencies=[Depends(require_api_token)], responses=error_responses(401, 422)
)
_ERRORS = error_responses(404, 409, 502, 503)
# The body is read by hand (it may be empty), so the document is told its shape.
_SILENCE_BODY = {
    "requestBody": {
        "required": False,
        "content": {"application/json": {"schema": SilenceIn.model_json_schema()}},
    }
}


@router.post(
    "/incidents/{incident_id}/silence", response_model=IncidentOut,
    responses={**error_responses(400), **_ERRORS}, openapi_extra=_SILENCE_BODY,
)
async def silence(incident_id: IncidentId, request: Request) -> IncidentOut | JSONResponse:
    """Silence the incident's group in Alertmanager (group labels, each ``=``)."""
    asked = await optional_body(request, SilenceIn)
    if isinstance(asked, JSONResponse):
        return asked
    return await run_in_threadpool(
        _then_shown, request, incident_id,
        lambda silences: silences.silence(incident_id, API, asked.length, asked.comment),
    )


@router.delete("/incidents/{incident_id}/silence", response_model=IncidentOut, responses=_ERRORS)
async def unsilence(incident_id: IncidentId, request: Request) -> IncidentOut | JSONResponse:
    """Expire the incident's silences that have not ended."""
    return await run_in_threadpool(
        _then_shown, request, incident_id,
        lambda silences: silences.unsilence(incident_id, API),
    )


def _then_shown(
    request: Request, incident_id: int, act: Callable[[Silences], object]
) -> IncidentOut | JSONResponse:
    context = request.app.state.context
    try:
        act(context.silences)
    except (SilencingNotConfigured, NothingToSilence) as exc:
        return error_response(409, str(exc))
    except AlertmanagerRefused as exc:
        log.warning("alertmanager_refused", incident_id=incident_id, error=str(exc))
        return error_response(502, f"Alertmanager refused: {exc.reason}")
    except AlertmanagerUnavailable as exc:
        log.warning("alertmanager_unavailable", incident_id=incident_id, error=str(exc))
        return error_response(503, "no Alertmanager answered in time; try again")
    # Read after the commit, which also sent what the change asked for.
    with session_scope(context.engine) as session:
        return shown_incident(session, incident_id)
