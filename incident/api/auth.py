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


class BearerCheck:
    """One route's bearer token, prepared once; :meth:`refusal` runs on every request."""

    __slots__ = ("_expected", "_open")

    def __init__(self, token: SecretStr | None, auth_off: bool) -> None:
        # Both sides are stripped: a token pasted with a trailing newline or blank,
        # into the environment or into Alertmanager's file, must still match.
        expected = token.get_secret_value().strip() if token is not None else ""
        self._expected = expected.encode()
        self._open = not expected and token is None and auth_off

    def refusal(self, header: str | None) -> str | None:
        """Why an ``Authorization`` header is refused, or None when it is accepted."""
        if self._open:
            return None
        if not self._expected:
            # A blank token is no token: it must never match an empty credential.
            return "no token is configured for this route"
        scheme, _, presented = (header or "").partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            return "missing bearer token"
        if not hmac.compare_digest(presented.encode(), self._expected):
            return "invalid bearer token"
        return None


def _check_bearer(request: Request, token: SecretStr | None, auth_off: bool) -> None:
    refusal = BearerCheck(token, auth_off).refusal(request.headers.get("authorization"))
    if refusal is not None:
        raise Unauthorized(refusal)


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def webhook_check(settings: Settings) -> BearerCheck:
    """Alertmanager's token: made once per app, as it is checked on every webhook."""
    return BearerCheck(settings.webhook_token, settings.webhook_auth == "none" or settings.dev_mode)


def require_api_token(request: Request) -> None:
    settings = _settings(request)
    _check_bearer(request, settings.api_token, settings.api_auth == "none" or settings.dev_mode)


def require_metrics_token(request: Request) -> None:
    _check_bearer(request, _settings(request).metrics_token, auth_off=True)
