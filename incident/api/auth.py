"""Bearer tokens, compared in constant time."""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request, status
from pydantic import SecretStr

from incident.config import Settings


class Unauthorized(HTTPException):
    def __init__(self, detail: str) -> None:
        super().__init__(
            status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"}
        )


def _check_bearer(request: Request, token: SecretStr | None, auth_off: bool) -> None:
    # Both sides are stripped: a token pasted with a trailing newline or blank,
    # into the environment or into Alertmanager's file, must still match.
    expected = token.get_secret_value().strip() if token is not None else ""
    if not expected:
        if token is None and auth_off:
            return
        # A blank token is no token: it must never match an empty credential.
        raise Unauthorized("no token is configured for this route")
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        raise Unauthorized("missing bearer token")
    if not hmac.compare_digest(presented.encode(), expected.encode()):
        raise Unauthorized("invalid bearer token")


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def require_webhook_token(request: Request) -> None:
    settings = _settings(request)
    _check_bearer(
        request, settings.webhook_token, settings.webhook_auth == "none" or settings.dev_mode
    )


def require_api_token(request: Request) -> None:
    settings = _settings(request)
    _check_bearer(request, settings.api_token, settings.api_auth == "none" or settings.dev_mode)


def require_metrics_token(request: Request) -> None:
    _check_bearer(request, _settings(request).metrics_token, auth_off=True)
