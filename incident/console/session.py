"""Who is signed in to the console: a signed session cookie, and the dependency pages use.

The session is Starlette's signed cookie (itsdangerous): HttpOnly, SameSite=Lax,
and Secure when INCIDENT_PUBLIC_URL is https. It holds the signed-in user
(``{"email", "name"}``) and the CSRF token of the console's forms. A page asked
for without a session redirects (303) to ``/login?next=<the page>``; sign-in
comes back there.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from urllib.parse import quote

from fastapi import FastAPI, Request
from starlette.middleware.sessions import SessionMiddleware

from incident.config import Settings

SESSION_COOKIE = "incident_session"
SESSION_MAX_AGE = 12 * 3600  # one on-call shift
USER_KEY = "user"
CSRF_KEY = "csrf"


@dataclass(frozen=True)
class User:
    email: str
    name: str


class SignInRequired(Exception):
    """No signed-in user: the handler answers 303 to ``/login?next=…``."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path

    @property
    def location(self) -> str:
        return "/login?next=" + quote(self.next_path, safe="/")


def install_sessions(app: FastAPI, settings: Settings) -> None:
    secret = settings.session_secret.get_secret_value() if settings.session_secret else ""
    if not secret:
        # `incident dev` without a configured secret: sessions last as long as the process.
        secret = secrets.token_urlsafe(32)
    app.add_middleware(
        SessionMiddleware,
        secret_key=secret,
        session_cookie=SESSION_COOKIE,
        max_age=SESSION_MAX_AGE,
        same_site="lax",
        https_only=settings.public_url.startswith("https://"),
    )


def sign_in(request: Request, user: User) -> None:
    """A fresh session for ``user`` (a new CSRF token with it)."""
    request.session.clear()
    request.session[USER_KEY] = {"email": user.email, "name": user.name}
    request.session[CSRF_KEY] = secrets.token_urlsafe(32)


def sign_out(request: Request) -> None:
    request.session.clear()


def signed_in(request: Request) -> User | None:
    stored = request.session.get(USER_KEY)
    if not isinstance(stored, dict) or not isinstance(stored.get("email"), str):
        return None
    return User(stored["email"], str(stored.get("name") or stored["email"]))


def current_user(request: Request) -> User:
    """Dependency of every console page: the signed-in user, or a 303 to sign-in."""
    user = signed_in(request)
    if user is None:
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise SignInRequired(path)
    return user


def safe_next(next_path: str | None) -> str:
    """Only a path on this site: never ``//evil.example`` or an absolute URL."""
    if not next_path or not next_path.startswith("/") or next_path.startswith("//") \
            or "\\" in next_path:
        return "/"
    return next_path


def csrf_token(request: Request) -> str:
    token = request.session.get(CSRF_KEY)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        request.session[CSRF_KEY] = token
    return token


def csrf_ok(request: Request, submitted: str | None) -> bool:
    expected = request.session.get(CSRF_KEY)
    # As bytes: compare_digest refuses non-ASCII text, which a forged form may carry.
    return isinstance(expected, str) and isinstance(submitted, str) \
        and secrets.compare_digest(expected.encode(), submitted.encode("utf-8", "replace"))
