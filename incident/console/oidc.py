"""Sign-in to the console with OpenID Connect, through authlib's Starlette client.

``GET /login`` remembers the page that was asked for and sends the browser to
the provider: Authorization Code flow with PKCE (S256), ``state`` and
``nonce``, all three kept in the signed session cookie until the browser comes
back. ``GET /auth/callback`` exchanges the code, verifies the ID token
(signature against the provider's JWKS, issuer, audience, expiry, nonce),
admits only a verified e-mail in INCIDENT_OIDC_ALLOWED_DOMAINS, signs the user
in and returns to that page. Anything refused there answers a page that says
what failed, and leaves no session. Signing out is the pages' ``/logout``.
Without INCIDENT_OIDC_ISSUER these routes are not mounted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import structlog
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.base_client import MismatchingStateError, OAuthError
from authlib.integrations.starlette_client import OAuth, StarletteOAuth2App
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from joserfc.errors import (
    BadSignatureError,
    ClaimError,
    ExpiredTokenError,
    InvalidKeyIdError,
    JoseError,
    MissingClaimError,
)

from incident.config import Settings
from incident.console.session import (
    User, safe_next, sign_in, sign_out, signed_in,
)

log = structlog.get_logger(__name__)
router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")

SCOPES = "openid email profile"
CALLBACK_PATH = "/auth/callback"
NEXT_KEY = "next"  # the page to return to after sign-in, in the session
PROVIDER_TIMEOUT_SECONDS = 10.0
# authlib talks to the provider with httpx2 when it is installed, else httpx.
_UNREACHABLE: tuple[type[Exception], ...] = (httpx.HTTPError,)
try:
    import httpx2
except ImportError:  # pragma: no cover
    pass
else:
    _UNREACHABLE += (httpx2.HTTPError,)
_CLAIM_NAMES = {"iss": "issuer", "aud": "audience", "nonce": "nonce", "azp": "authorized party",
                "exp": "expiry", "iat": "issued-at time", "sub": "subject"}


def discovery_url(issuer: str) -> str:
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


def callback_url(settings: Settings) -> str:
    return settings.public_url.rstrip("/") + CALLBACK_PATH


def oidc_client(settings: Settings) -> StarletteOAuth2App:
    """The provider's client, configured by discovery from INCIDENT_OIDC_ISSUER."""
    assert settings.oidc_issuer and settings.oidc_client_id and settings.oidc_client_secret
    return OAuth().register(
        "oidc",
        client_id=settings.oidc_client_id,
        client_secret=settings.oidc_client_secret.get_secret_value(),
        server_metadata_url=discovery_url(settings.oidc_issuer),
        client_kwargs={
            "scope": SCOPES,
            "code_challenge_method": "S256",
            "timeout": PROVIDER_TIMEOUT_SECONDS,
        },
    )


def id_token_claims_options(settings: Settings) -> dict[str, dict[str, Any]]:
    # The issuer is the one configured here, not whatever the discovery document says.
    return {
        "iss": {"essential": True, "value": settings.oidc_issuer},
        "aud": {"essential": True, "value": settings.oidc_client_id},
    }


def _client(request: Request) -> StarletteOAuth2App:
    # One per app: it caches the discovery document and the JWKS.
    state = request.app.state
    client = getattr(state, "oidc_client", None)
    if client is None:
        client = state.oidc_client = oidc_client(state.settings)
    return client


class SignInRefused(Exception):
    def __init__(self, status: int, what: str, why: str) -> None:
        super().__init__(f"{what}: {why}")
        self.status, self.what, self.why = status, what, why


@router.get("/login")
async def login(request: Request, next: str | None = None) -> Response:
    target = safe_next(next)
    if signed_in(request) is not None:
        return RedirectResponse(target, status_code=303)
    request.session[NEXT_KEY] = target
    settings: Settings = request.app.state.settings
    try:
        response = await _client(request).authorize_redirect(request, callback_url(settings))
    except (*_UNREACHABLE, ValueError, RuntimeError) as exc:
        log.warning("console_sign_in_provider_unreachable", error=type(exc).__name__)
        return _refusal_page(request, SignInRefused(
            502, "The sign-in provider could not be reached",
            "its discovery document or authorization endpoint did not answer. Try again shortly.",
        ), target)
    response.status_code = 303
    return response


@router.get(CALLBACK_PATH)
async def callback(request: Request) -> Response:
    target = safe_next(request.session.get(NEXT_KEY))
    try:
        user = await _verified_user(request)
    except SignInRefused as refused:
        log.warning("console_sign_in_refused", status=refused.status, reason=str(refused))
        return _refusal_page(request, refused, target)
    sign_in(request, user)
    log.info("console_signed_in", email=user.email)
    return RedirectResponse(target, status_code=303)


async def _verified_user(request: Request) -> User:
    settings: Settings = request.app.state.settings
    try:
        token = await _client(request).authorize_access_token(
            request, claims_options=id_token_claims_options(settings)
        )
    except MismatchingStateError as exc:
        raise SignInRefused(
            400, "This sign-in was not started here, or was already used",
            "the state it came back with does not match this browser's session.",
        ) from exc
    except OAuthError as exc:
        if request.query_params.get("error"):
            raise SignInRefused(
                403, "The sign-in provider refused the sign-in",
                _describe(exc.error, exc.description),
            ) from exc
        raise SignInRefused(
            400, "The sign-in provider did not accept the authorization code",
            _describe(exc.error, exc.description),
        ) from exc
    except JoseError as exc:
        raise SignInRefused(403, "The ID token was refused", _token_fault(exc)) from exc
    except AuthlibBaseError as exc:
        raise SignInRefused(
            400, "The sign-in provider's answer was refused", _describe(exc.error, exc.description)
        ) from exc
    except (*_UNREACHABLE, ValueError) as exc:
        raise SignInRefused(
            502, "The sign-in provider could not be reached",
            "its token endpoint did not answer as expected. Try again shortly.",
        ) from exc
    claims = token.get("userinfo")
    if not claims:
        raise SignInRefused(403, "The ID token was refused", "the provider sent none.")
    return allowed_user(claims, settings.allowed_email_domains)


def allowed_user(claims: dict[str, Any], allowed_domains: list[str]) -> User:
    """The user of verified ID token claims, if their e-mail may use the console."""
    email = claims.get("email")
    if not isinstance(email, str) or "@" not in email:
        raise SignInRefused(
            403, "This account cannot sign in",
            "the provider sent no e-mail address; the console needs the 'email' scope.",
        )
    if claims.get("email_verified") not in (True, "true"):
        raise SignInRefused(
            403, "This account cannot sign in",
            f"the provider has not verified the e-mail address {email}.",
        )
    domain = email.rsplit("@", 1)[1].lower()
    if allowed_domains and domain not in allowed_domains:
        raise SignInRefused(
            403, "This account cannot sign in",
            f"{email} is not in a domain allowed to use this console "
            f"({', '.join(allowed_domains)}).",
        )
    name = claims.get("name")
    return User(email, name if isinstance(name, str) and name else email)


def _describe(error: str | None, description: str | None) -> str:
    return ": ".join(part for part in (error, description) if part) or "no reason given."


def _token_fault(exc: JoseError) -> str:
    if isinstance(exc, ExpiredTokenError):
        return "it has expired."
    if isinstance(exc, (BadSignatureError, InvalidKeyIdError)):
        return "its signature does not match the provider's published keys."
    if isinstance(exc, MissingClaimError):
        return f"it has no {_CLAIM_NAMES.get(exc.claim, exc.claim)} claim."
    if isinstance(exc, ClaimError):
        return f"its {_CLAIM_NAMES.get(exc.claim, exc.claim)} claim is wrong."
    return exc.description or exc.error


def _refusal_page(request: Request, refused: SignInRefused, target: str) -> HTMLResponse:
    sign_out(request)
    return templates.TemplateResponse(
        request, "auth_error.html",
        {"what": refused.what, "why": refused.why, "retry": "/login?next=" + quote(target, safe="/")},
        status_code=refused.status,
    )
