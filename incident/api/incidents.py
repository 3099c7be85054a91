"""GET /api/incidents, GET /api/incidents/{id} (its alerts and timeline paged), and
acknowledge/resolve by hand."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Literal, TypeVar

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session, selectinload

from incident.api.auth import require_api_token
from incident.api.errors import error_response, error_responses, validation_fields
from incident.db import engine_for, session_scope
from incident.incidents import store
from incident.incidents.lifecycle import API
from incident.incidents.models import TimelineKind
from incident.models import Incident
from incident.incidents.schemas import (
    AlertPage,
    IncidentOut,
    IncidentPage,
    TimelinePage,
    TransitionRequest,
)

router = APIRouter(
    prefix="/api", dependencies=[Depends(require_api_token)], responses=error_responses(401, 422)
)

IncidentId = Annotated[int, Path(ge=1, le=2**63 - 1)]
Cursor = Annotated[str | None, Query(max_length=200)]
# How many alerts or timeline entries one answer holds, with an incident or in a page.
RowLimit = Annotated[int, Query(ge=1, le=store.SHOWN_MAX)]
# Everything the incident JSON shows, loaded with it.
_SHOWN = (
    selectinload(Incident.notifications), selectinload(Incident.remediations),
    selectinload(Incident.silences),
)
# The body is read by hand (it may be empty), so the document is told its shape.
_NOTE_BODY = {
    "requestBody": {
        "required": False,
        "content": {"application/json": {"schema": TransitionRequest.model_json_schema()}},
    }
}


def db_session(request: Request) -> Iterator[Session]:
    engine = engine_for(request.app.state.settings.require_database_url())
    with session_scope(engine) as session:
        yield session


DbSession = Annotated[Session, Depends(db_session)]
Body = TypeVar("Body", bound=BaseModel)


@router.get("/incidents", response_model=IncidentPage)
def list_incidents(
    session: DbSession,
    status: Literal["triggered", "acknowledged", "resolved"] | None = None,
    severity: Literal["SEV1", "SEV2", "SEV3", "SEV4"] | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Cursor = None,
    alerts_limit: RowLimit = store.SHOWN_DEFAULT,
    timeline_limit: RowLimit = store.SHOWN_DEFAULT,
) -> IncidentPage:
    rows, next_cursor = store.list_incidents(
        session, status=status, severity=severity, limit=limit, cursor=cursor, options=_SHOWN
    )
    shown = store.shown(session, rows, alerts_limit=alerts_limit, timeline_limit=timeline_limit)
    return IncidentPage(items=[IncidentOut.of(one) for one in shown], next_cursor=next_cursor)


@router.get("/incidents/{incident_id}", response_model=IncidentOut, responses=error_responses(404))
def get_incident(
    incident_id: IncidentId,
    session: DbSession,
    alerts_limit: RowLimit = store.SHOWN_DEFAULT,
    timeline_limit: RowLimit = store.SHOWN_DEFAULT,
) -> IncidentOut:
    return shown_incident(session, incident_id, alerts_limit=alerts_limit, timeline_limit=timeline_limit)


@router.get(
    "/incidents/{incident_id}/alerts", response_model=AlertPage, responses=error_responses(404)
)
def incident_alerts(
    incident_id: IncidentId, session: DbSession, limit: RowLimit = store.SHOWN_DEFAULT,
    cursor: Cursor = None,
) -> AlertPage:
    """The incident's alerts, oldest first; pass ``next_cursor`` back as ``?cursor=``."""
    rows, next_cursor = store.alert_page(session, incident_id, limit=limit, cursor=cursor)
    return AlertPage.model_validate({"items": rows, "next_cursor": next_cursor}, from_attributes=True)


@router.get(
    "/incidents/{incident_id}/timeline", response_model=TimelinePage,
    responses=error_responses(404),
)
def incident_timeline(
    incident_id: IncidentId, session: DbSession, limit: RowLimit = store.SHOWN_DEFAULT,
    cursor: Cursor = None,
) -> TimelinePage:
    """The incident's timeline, oldest first; pass ``next_cursor`` back as ``?cursor=``."""
    rows, next_cursor = store.timeline_page(session, incident_id, limit=limit, cursor=cursor)
    return TimelinePage.model_validate(
        {"items": rows, "next_cursor": next_cursor}, from_attributes=True
    )


def shown_incident(session: Session, incident_id: int, **limits: int) -> IncidentOut:
    incident = store.get_incident(session, incident_id, options=_SHOWN)
    [shown] = store.shown(session, [incident], **limits)
    return IncidentOut.of(shown)


async def optional_body(request: Request, model: type[Body]) -> Body | JSONResponse:
    """The request's JSON body as ``model`` (its defaults when empty), or the error answer."""
    body = await request.body()
    if not body.strip():
        return model()
    try:
        return model.model_validate(orjson.loads(body))
    except orjson.JSONDecodeError as exc:
        return error_response(400, f"body is not valid JSON: {exc}")
    except ValidationError as exc:
        return error_response(422, "invalid body", fields=validation_fields(exc))


def _transition(request: Request, incident_id: int, to: TimelineKind, note: str | None) -> IncidentOut:
    context = request.app.state.context
    with session_scope(context.engine) as session:
        store.transition_by_hand(session, incident_id, to, API, note=note, events=context.events)
    # Read after the commit, which also sent what the transition asked for.
    with session_scope(context.engine) as session:
        return shown_incident(session, incident_id)


async def _by_hand(request: Request, incident_id: int, to: TimelineKind) -> IncidentOut | JSONResponse:
    parsed = await optional_body(request, TransitionRequest)
    if isinstance(parsed, JSONResponse):
        return parsed
    return await run_in_threadpool(_transition, request, incident_id, to, parsed.note)


@router.post(
    "/incidents/{incident_id}/acknowledge", response_model=IncidentOut,
    responses=error_responses(400, 404, 409), openapi_extra=_NOTE_BODY,
)
async def acknowledge(incident_id: IncidentId, request: Request) -> IncidentOut | JSONResponse:
    return await _by_hand(request, incident_id, TimelineKind.ACKNOWLEDGED)


@router.post(
    "/incidents/{incident_id}/resolve", response_model=IncidentOut,
    responses=error_responses(400, 404, 409), openapi_extra=_NOTE_BODY,
)
async def resolve(incident_id: IncidentId, request: Request) -> IncidentOut | JSONResponse:
    return await _by_hand(request, incident_id, TimelineKind.RESOLVED)
