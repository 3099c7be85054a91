"""``incident dev`` without an OpenID Connect provider: ``/login`` signs in a local user."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse

from incident.console.session import User, safe_next, sign_in

LOCAL_USER = User("dev@localhost", "local user")

router = APIRouter(include_in_schema=False)


@router.get("/login")
def login(request: Request, next: str | None = None) -> RedirectResponse:
    sign_in(request, LOCAL_USER)
    return RedirectResponse(safe_next(next), status_code=303)
