"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from incident import __version__
from incident.api import (
    breakers, health, incidents, maintenance, pagerduty, silences, slack, webhooks,
)
from incident.api.auth import webhook_check
from incident.api.errors import error_response, validation_fields
from incident.config import Settings, get_settings
from incident.console import local, oidc, pages
from incident.console.session import SignInRequired, install_sessions
from incident.context import Context
from incident.incidents.store import BadCursor, IncidentNotFound, TransitionNotAllowed
from incident.logging import configure_logging
from incident.tracing import configure as configure_tracing
from incident.tracing import instrument_app
from incident.rules import load_rules, require_routing_keys
from incident.worker.app import app as celery_app
from incident.worker.app import publish
from incident.worker.publisher import TaskPublisher, direct_url


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.check_receiver_auth()
    settings.check_console()
    # Again here: uvicorn's --workers processes are spawned and never ran the CLI.
    configure_logging(settings, process="api")
    configure_tracing(process="api")
    app = FastAPI(
        title="incident",
        version=__version__,
        description="Alertmanager webhooks in, incidents out.",
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.state.webhook_check = webhook_check(settings)
    # Webhooks go straight onto a Redis broker's queue; another broker takes Celery's publish.
    redis_url = direct_url(settings.broker_url or "")
    app.state.publisher = TaskPublisher(celery_app, redis_url) if redis_url else None
    app.state.rules = load_rules(settings.rules_file)
    require_routing_keys(app.state.rules.routes)
    app.state.context = Context(settings, app.state.rules, publish)
    app.include_router(webhooks.router)
    app.include_router(pagerduty.router)
    app.include_router(incidents.router)
    app.include_router(silences.router)
    app.include_router(maintenance.router)
    app.include_router(slack.router)
    app.include_router(breakers.router)
    app.include_router(health.router)
    if settings.console_enabled:
        _install_console(app, settings)
    _install_error_handlers(app)
    instrument_app(app)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    if app.state.publisher is not None:
        await app.state.publisher.close()


def _install_console(app: FastAPI, settings: Settings) -> None:
    """The web console; without a sign-in (OpenID Connect, or `incident dev`) its routes are 404."""
    install_sessions(app, settings)
    if settings.oidc_configured:
        # Before the pages: with a provider, /logout is its page and its form's answer.
        app.include_router(oidc.router)
    elif settings.dev_mode:
        app.include_router(local.router)
    app.include_router(pages.router)
    app.mount("/static", pages.static_files, name="static")

    @app.exception_handler(SignInRequired)
    async def sign_in_first(request: Request, exc: SignInRequired) -> RedirectResponse:
        return RedirectResponse(exc.location, status_code=303)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own shape is {"detail": [...]}; every error here is {"error", "fields"}.
        return error_response(422, "invalid request", fields=validation_fields(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = error_response(exc.status_code, str(exc.detail))
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.exception_handler(SignInRequired)
    async def sign_in_required(request: Request, exc: SignInRequired) -> RedirectResponse:
        return RedirectResponse(exc.location, status_code=303)

    @app.exception_handler(IncidentNotFound)
    async def not_found(request: Request, exc: IncidentNotFound) -> JSONResponse:
        return error_response(404, f"no incident {exc.args[0]}")

    @app.exception_handler(TransitionNotAllowed)
    async def conflict(request: Request, exc: TransitionNotAllowed) -> JSONResponse:
        return error_response(409, str(exc))

    @app.exception_handler(BadCursor)
    async def bad_cursor(request: Request, exc: BadCursor) -> JSONResponse:
        return error_response(
            422, str(exc), fields=[{"field": "query.cursor", "message": str(exc)}]
        )
