"""A fake OpenID Connect provider on loopback, for the console's sign-in.

It serves what a real one does to a relying party: the discovery document,
the JWKS, an authorization endpoint that sends the browser straight back with
a code (recording the state, nonce and PKCE challenge it was given), and a
token endpoint that checks the code, the PKCE verifier and the client's
credentials before issuing an RS256 ID token signed with joserfc.

Tests make it mis-issue: ``claims_override`` changes (or, with None, drops)
ID token claims (``aud``, ``iss``, ``exp``, ``nonce``, ``email``,
``email_verified``…), ``sign_with_forged_key`` signs with a key that is not
the published one (under the published key id), and ``authorize_error``
answers the authorization request with an OAuth error instead of a code, and
``discovery_issuer`` names another issuer in the discovery document.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from typing import Any
from urllib.parse import urlencode

from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.fakes.http_server import FakeHTTPService, Reply, ScriptedFailure

KEY_ID = "fake-oidc-key-1"
CLIENT_ID = "incident-console"
CLIENT_SECRET = "fake-oidc-client-secret-3c1d"


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class FakeOIDCProvider(FakeHTTPService):
    def __init__(self, *, client_id: str = CLIENT_ID, client_secret: str = CLIENT_SECRET) -> None:
        super().__init__()
        self.client_id = client_id
        self.client_secret = client_secret
        self._key = RSAKey.generate_key(2048, parameters={"kid": KEY_ID})
        self._forged_key = RSAKey.generate_key(2048, parameters={"kid": KEY_ID})
        self._codes: dict[str, dict[str, str]] = {}
        self.user: dict[str, Any] = {}
        self.reset()

    def reset(self) -> None:
        """Issue honest tokens for the default user again."""
        with self._lock:
            self._requests.clear()
            self._codes.clear()
            self.user = {"sub": "248289761001", "email": "alice@example.com",
                         "email_verified": True, "name": "Alice Example"}
            self.claims_override: dict[str, Any] = {}
            self.sign_with_forged_key = False
            self.authorize_error: str | None = None
            self.discovery_issuer: str | None = None
            self.issued_tokens: list[dict[str, Any]] = []

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def authorizations(self) -> list[dict[str, Any]]:
        """The query of every authorization request, in order."""
        return [r.body for r in self.calls("/authorize")]

    @property
    def token_requests(self) -> list[dict[str, Any]]:
        return [r.body for r in self.calls("/token")]

    # --- the endpoints -------------------------------------------------------

    def handle(self, method: str, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        if method == "/.well-known/openid-configuration":
            return Reply(200, self._discovery())
        if method == "/jwks":
            public = self._key.as_dict(private=False)
            return Reply(200, {"keys": [{**public, "use": "sig", "alg": "RS256"}]})
        if method == "/authorize":
            return self._authorize(body)
        if method == "/token":
            return self._token(body, headers)
        return Reply(404, {"error": "not_found"})

    def scripted_reply(self, failure: ScriptedFailure) -> Reply:
        return Reply(failure.status or 503, {"error": failure.error or "temporarily_unavailable"})

    def _discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.discovery_issuer or self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "email", "profile"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic",
                                                      "client_secret_post"],
        }

    def _authorize(self, query: dict[str, Any]) -> Reply:
        redirect_uri = query.get("redirect_uri", "")
        if query.get("client_id") != self.client_id or not redirect_uri:
            return Reply(400, "unknown client or no redirect_uri")
        back: dict[str, str] = {"state": query.get("state", "")}
        if self.authorize_error:
            back["error"] = self.authorize_error
            back["error_description"] = "The user said no"
        else:
            code = secrets.token_urlsafe(16)
            self._codes[code] = dict(query)
            back["code"] = code
        return Reply(302, "", {"Location": f"{redirect_uri}?{urlencode(back)}"})

    def _token(self, form: dict[str, Any], headers: dict[str, str]) -> Reply:
        if not self._client_authenticated(form, headers):
            return Reply(401, {"error": "invalid_client"})
        if form.get("grant_type") != "authorization_code":
            return Reply(400, {"error": "unsupported_grant_type"})
        asked = self._codes.pop(form.get("code", ""), None)
        if asked is None:
            return Reply(400, {"error": "invalid_grant", "error_description": "unknown code"})
        if form.get("redirect_uri") != asked["redirect_uri"]:
            return Reply(400, {"error": "invalid_grant", "error_description": "redirect_uri"})
        verifier = form.get("code_verifier") or ""
        if asked.get("code_challenge_method") != "S256" \
                or s256(verifier) != asked.get("code_challenge"):
            return Reply(400, {"error": "invalid_grant", "error_description": "PKCE verifier"})
        return Reply(200, {
            "access_token": secrets.token_urlsafe(24),
            "token_type": "Bearer",
            "expires_in": 3600,
            "scope": asked.get("scope", ""),
            "id_token": self._id_token(asked),
        })

    def _client_authenticated(self, form: dict[str, Any], headers: dict[str, str]) -> bool:
        basic = headers.get("authorization", "")
        if basic.lower().startswith("basic "):
            given = base64.b64decode(basic[6:]).decode()
        else:
            given = f"{form.get('client_id')}:{form.get('client_secret')}"
        return secrets.compare_digest(given, f"{self.client_id}:{self.client_secret}")

    def _id_token(self, asked: dict[str, str]) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer, "aud": self.client_id, "iat": now, "exp": now + 300,
            "nonce": asked.get("nonce"), **self.user,
        }
        for name, value in self.claims_override.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        self.issued_tokens.append(claims)
        key = self._forged_key if self.sign_with_forged_key else self._key
        return jwt.encode({"alg": "RS256", "kid": KEY_ID}, claims, key)
