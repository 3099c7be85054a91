"""The console's pages: the incident list, one incident and its actions, the stats.

Every page needs a signed-in user (``current_user``). Actions are POST forms
carrying the session's CSRF token; they go through the same store and
silences service as the API and Slack, as ``by: web`` with the user's e-mail,
then redirect (303) back to the incident with a one-time message.
"""

from __future__ import annotations

from datetime import UTC, timedelta
from pathlib import Path
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import selectinload

from incident.console import queries, stats
from incident.console.session import (
    User, csrf_ok, csrf_token, current_user, sign_out, signed_in,
)
from incident.db import session_scope
from incident.incidents import store
from incident.incidents.lifecycle import WEB, Actor, TransitionNotAllowed
from incident.incidents.models import Incident, TimelineKind
from incident.integrations.alertmanager import AlertmanagerRefused, AlertmanagerUnavailable
from incident.silences.service import NothingToSilence, SilencingNotConfigured

log = structlog.get_logger(__name__)

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.globals["csrf_token"] = csrf_token
templates.env.filters["utc"] = lambda moment: moment.astimezone(UTC)
static_files = StaticFiles(directory=HERE / "static")

router = APIRouter(include_in_schema=False)
SignedIn = Annotated[User, Depends(current_user)]
CsrfField = Annotated[str | None, Form()]

FLASH_KEY = "flash"
SILENCE_CHOICES = {"1h": timedelta(hours=1), "4h": timedelta(hours=4), "24h": timedelta(hours=24)}
# An incident page shows this many of its alerts and timeline entries; the API pages the rest.
SHOWN_ALERTS = 200
SHOWN_TIMELINE = 500
_SHOWN = (
    selectinload(Incident.notifications), selectinload(Incident.remediations),
    selectinload(Incident.silences),
)
_PAGE_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "Referrer-Policy": "same-origin",
}
_DONE = {TimelineKind.ACKNOWLEDGED: "acknowledged", TimelineKind.RESOLVED: "resolved"}


def render(request: Request, name: str, user: User | None, status_code: int = 200,
           **values: Any) -> HTMLResponse:
    response = templates.TemplateResponse(
        request, name, {"user": user, **values}, status_code=status_code
    )
    # The action buttons must not be clickable through another site's frame.
    response.headers.update(_PAGE_HEADERS)
    return response


@router.get("/", response_class=HTMLResponse)
def incident_list(request: Request, user: SignedIn) -> HTMLResponse:
    filters = queries.Filters.of(request.query_params)
    with session_scope(request.app.state.context.engine) as session:
        found = queries.incident_list(session, filters)
        values = {"filters": filters, "found": found, "severities": queries.SEVERITIES,
                  "statuses": queries.STATUSES}
        # The page's script asks for the list alone, every few seconds, with the same filters.
        if request.query_params.get("fragment") == "list":
            return render(request, "_incident_list.html", user, **values)
        return render(request, "incidents.html", user, **values)


@router.get("/incidents/{incident_id}", response_class=HTMLResponse)
def incident_page(request: Request, incident_id: str, user: SignedIn) -> HTMLResponse:
    number = _incident_number(incident_id)
    flash = request.session.pop(FLASH_KEY, None)
    with session_scope(request.app.state.context.engine) as session:
        try:
            incident = store.get_incident(session, number, options=_SHOWN) if number else None
        except store.IncidentNotFound:
            incident = None
        if incident is None:
            return _not_found(request, user, incident_id)
        [shown] = store.shown(
            session, [incident], alerts_limit=SHOWN_ALERTS, timeline_limit=SHOWN_TIMELINE
        )
        return render(
            request, "incident.html", user, shown=shown, incident=incident, flash=flash,
            runbooks=_runbooks(shown), silence_choices=list(SILENCE_CHOICES),
        )


@router.post("/incidents/{incident_id}/acknowledge")
def acknowledge(request: Request, incident_id: str, user: SignedIn,
                csrf: CsrfField = None) -> Response:
    return _by_hand(request, incident_id, user, csrf, TimelineKind.ACKNOWLEDGED)


@router.post("/incidents/{incident_id}/resolve")
def resolve(request: Request, incident_id: str, user: SignedIn, csrf: CsrfField = None) -> Response:
    return _by_hand(request, incident_id, user, csrf, TimelineKind.RESOLVED)


@router.post("/incidents/{incident_id}/silence")
def silence(request: Request, incident_id: str, user: SignedIn, csrf: CsrfField = None,
            duration: Annotated[str | None, Form()] = None) -> Response:
    number = _incident_number(incident_id)
    if not csrf_ok(request, csrf):
        return _forbidden(request, user)
    if number is None:
        return _not_found(request, user, incident_id)
    length = SILENCE_CHOICES.get(duration or "")
    if length is None:
        return _back(request, number, "error",
                     "Choose how long to silence for: " + ", ".join(SILENCE_CHOICES) + ".")
    context = request.app.state.context
    try:
        context.silences.silence(number, _actor(user), length, f"silenced from the console by {user.email}")
    except store.IncidentNotFound:
        return _not_found(request, user, incident_id)
    except (SilencingNotConfigured, NothingToSilence) as exc:
        return _back(request, number, "error", f"Not silenced: {exc}.")
    except AlertmanagerRefused as exc:
        log.warning("alertmanager_refused", incident_id=number, error=str(exc))
        return _back(request, number, "error", f"Not silenced: Alertmanager refused: {exc.reason}")
    except AlertmanagerUnavailable as exc:
        log.warning("alertmanager_unavailable", incident_id=number, error=str(exc))
        return _back(request, number, "error",
                     "Not silenced: no Alertmanager answered in time; try again in a moment.")
    return _back(request, number, "ok", f"Silenced for {duration}.")


@router.get("/stats", response_class=HTMLResponse)
def stats_page(request: Request, user: SignedIn) -> HTMLResponse:
    days = stats.period(request.query_params.get("days"))
    with session_scope(request.app.state.context.engine) as session:
        figures = stats.incident_stats(session, days)
    return render(request, "stats.html", user, stats=figures, periods=stats.PERIODS,
                  severities=queries.SEVERITIES)


@router.get("/logout", response_class=HTMLResponse)
def logout_page(request: Request) -> HTMLResponse:
    """A Sign out button while signed in (signing out is a form post, never a link)."""
    user = signed_in(request)
    return render(request, "signed_out.html", user,
                  csrf_token=csrf_token(request) if user else None)


@router.post("/logout")
def logout(request: Request, csrf: CsrfField = None) -> Response:
    if not csrf_ok(request, csrf):
        return _forbidden(request, None)
    sign_out(request)
    return RedirectResponse("/logout", status_code=303)


def _by_hand(request: Request, incident_id: str, user: User, csrf: str | None,
             to: TimelineKind) -> Response:
    number = _incident_number(incident_id)
    if not csrf_ok(request, csrf):
        return _forbidden(request, user)
    if number is None:
        return _not_found(request, user, incident_id)
    context = request.app.state.context
    try:
        with session_scope(context.engine) as session:
            store.transition_by_hand(session, number, to, _actor(user), events=context.events)
    except store.IncidentNotFound:
        return _not_found(request, user, incident_id)
    except TransitionNotAllowed:
        return _back(request, number, "info", _already(context.engine, number))
    return _back(request, number, "ok", f"Incident #{number} {_DONE[to]}.")


def _already(engine, number: int) -> str:
    with session_scope(engine) as session:
        incident = session.get(Incident, number)
        if incident is None:
            return f"Incident #{number} no longer exists."
        who = incident.resolved_by if incident.status == "resolved" else incident.acknowledged_by
        said = f" by {who.get('name') or who.get('user') or who.get('by')}" if who else ""
        return f"Nothing changed: incident #{number} is already {incident.status}{said}."


def _actor(user: User) -> Actor:
    return Actor(WEB, user.email, user.email)


def _incident_number(raw: str) -> int | None:
    return int(raw) if raw.isascii() and raw.isdigit() and 0 < int(raw) < 2**63 else None


def _runbooks(shown: store.Shown) -> list[str]:
    urls = (alert.annotations.get("runbook_url", "") for alert in shown.alerts.items)
    return [url for url in dict.fromkeys(urls) if url.startswith(("https://", "http://"))]


def _back(request: Request, number: int, level: str, text: str) -> RedirectResponse:
    request.session[FLASH_KEY] = {"level": level, "text": text}
    return RedirectResponse(f"/incidents/{number}", status_code=303)


def _forbidden(request: Request, user: User | None) -> HTMLResponse:
    return render(
        request, "error.html", user, status_code=403, title="Form refused",
        message="This form was not sent from this console session (its security token "
                "is missing or wrong), so nothing was changed. Reload the page and try again.",
    )


def _not_found(request: Request, user: User, incident_id: str) -> HTMLResponse:
    return render(request, "error.html", user, status_code=404, title="No such incident",
                  message=f"There is no incident {incident_id[:40]!r}.")
