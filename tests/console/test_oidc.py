"""Signing in to the console with OpenID Connect, against a fake provider on
loopback that the real authlib client talks to. The test is the browser: it
follows every redirect by hand, to the provider and back."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Annotated
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import Depends
from fastapi.responses import PlainTextResponse
from fastapi.testclient import TestClient
from itsdangerous import TimestampSigner

from incident.api.app import create_app
from incident.config import ConfigurationError, Settings
from incident.console.session import SESSION_COOKIE, User, current_user
from tests.fakes.oidc import CLIENT_ID, CLIENT_SECRET, FakeOIDCProvider, s256

SESSION_SECRET = "test-session-secret-0a9f7c"
PAGE = "/test/protected"


def console_settings(provider: FakeOIDCProvider, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "oidc_issuer": provider.issuer,
        "oidc_client_id": CLIENT_ID,
        "oidc_client_secret": CLIENT_SECRET,
        "session_secret": SESSION_SECRET,
        "public_url": "http://testserver",
        **overrides,
    }
    return Settings(**values)


def console_client(settings: Settings, base_url: str = "http://testserver") -> TestClient:
    app = create_app(settings)

    @app.get(PAGE)
    def protected(user: Annotated[User, Depends(current_user)]) -> PlainTextResponse:
        return PlainTextResponse(f"signed in as {user.email} ({user.name})")

    return TestClient(app, base_url=base_url, follow_redirects=False)


@pytest.fixture
def browser(incident_environment, oidc_provider: FakeOIDCProvider) -> Iterator[TestClient]:
    with console_client(console_settings(oidc_provider)) as client:
        yield client


def to_provider(browser: TestClient, provider: FakeOIDCProvider, path: str = PAGE) -> str:
    """Ask for a page unsigned; answer the authorization URL it leads to."""
    page = browser.get(path)
    assert page.status_code == 303
    login = browser.get(page.headers["location"])
    assert login.status_code == 303, login.text
    authorize = login.headers["location"]
    assert authorize.startswith(f"{provider.issuer}/authorize?")
    return authorize


def through_provider(browser: TestClient, authorize: str) -> httpx.Response:
    """The provider signs the user in and sends the browser back to the callback."""
    back = httpx.get(authorize, follow_redirects=False, timeout=10)
    assert back.status_code == 302, back.text
    callback = back.headers["location"]
    assert callback.startswith("http://testserver/auth/callback?") or \
        callback.startswith("https://testserver/auth/callback?")
    return browser.get(callback)


def sign_in(browser: TestClient, provider: FakeOIDCProvider, path: str = PAGE) -> httpx.Response:
    return through_provider(browser, to_provider(browser, provider, path))


def assert_signed_out(browser: TestClient) -> None:
    again = browser.get(PAGE)
    assert again.status_code == 303
    assert again.headers["location"].startswith("/login?next=")


def test_signing_in_returns_to_the_page_that_was_asked_for(browser, oidc_provider):
    page = browser.get(f"{PAGE}?filter=open")
    assert page.status_code == 303
    assert page.headers["location"] == f"/login?next={PAGE}%3Ffilter%3Dopen"

    done = through_provider(browser, to_provider(browser, oidc_provider, f"{PAGE}?filter=open"))

    assert done.status_code == 303
    assert done.headers["location"] == f"{PAGE}?filter=open"
    shown = browser.get(done.headers["location"])
    assert shown.status_code == 200
    assert shown.text == "signed in as alice@example.com (Alice Example)"


def test_the_authorization_request_uses_pkce_state_nonce_and_the_public_callback(
    browser, oidc_provider
):
    asked = parse_qs(urlsplit(to_provider(browser, oidc_provider)).query)

    assert asked["response_type"] == ["code"]
    assert asked["client_id"] == [CLIENT_ID]
    assert asked["redirect_uri"] == ["http://testserver/auth/callback"]
    assert set(asked["scope"][0].split()) == {"openid", "email", "profile"}
    assert asked["code_challenge_method"] == ["S256"]
    assert len(asked["code_challenge"][0]) == 43  # base64url of a SHA-256
    assert asked["state"][0] and asked["nonce"][0]


def test_the_token_request_carries_the_pkce_verifier_and_the_client_secret(
    browser, oidc_provider
):
    assert sign_in(browser, oidc_provider).status_code == 303

    [authorization] = oidc_provider.authorizations
    [token_request] = oidc_provider.token_requests
    assert s256(token_request["code_verifier"]) == authorization["code_challenge"]
    assert CLIENT_SECRET not in json.dumps(authorization)  # only the token endpoint sees it
    assert oidc_provider.issued_tokens[0]["nonce"] == authorization["nonce"]


@pytest.mark.parametrize(("mischief", "reason"), [
    ({"aud": "some-other-client"}, "audience"),
    ({"iss": "https://impostor.example"}, "issuer"),
    ({"exp": 1_600_000_000, "iat": 1_599_990_000}, "expired"),
    ({"nonce": "a-nonce-from-another-sign-in"}, "nonce"),
], ids=["wrong-audience", "wrong-issuer", "expired", "bad-nonce"])
def test_an_id_token_that_fails_verification_is_refused(
    browser, oidc_provider, mischief, reason
):
    oidc_provider.claims_override = mischief

    refused = sign_in(browser, oidc_provider)

    assert refused.status_code == 403
    assert "The ID token was refused" in refused.text
    assert reason in refused.text
    assert_signed_out(browser)


def test_the_issuer_checked_is_the_configured_one_not_the_discovery_documents(
    browser, oidc_provider
):
    oidc_provider.discovery_issuer = "https://impostor.example"
    oidc_provider.claims_override = {"iss": "https://impostor.example"}

    refused = sign_in(browser, oidc_provider)

    assert refused.status_code == 403
    assert "issuer" in refused.text
    assert_signed_out(browser)


def test_an_id_token_signed_with_another_key_is_refused(browser, oidc_provider):
    oidc_provider.sign_with_forged_key = True

    refused = sign_in(browser, oidc_provider)

    assert refused.status_code == 403
    assert "signature" in refused.text
    assert_signed_out(browser)


def test_an_id_token_without_a_nonce_is_refused(browser, oidc_provider):
    oidc_provider.claims_override = {"nonce": None}

    refused = sign_in(browser, oidc_provider)

    assert refused.status_code == 403
    assert "no nonce claim" in refused.text
    assert_signed_out(browser)


def test_an_e_mail_outside_the_allowed_domains_is_refused_with_a_403_page(
    incident_environment, oidc_provider
):
    oidc_provider.user["email"] = "mallory@Elsewhere.example"
    settings = console_settings(oidc_provider, oidc_allowed_domains="example.com, corp.example")
    with console_client(settings) as browser:
        refused = sign_in(browser, oidc_provider)

        assert refused.status_code == 403
        assert refused.headers["content-type"].startswith("text/html")
        assert "mallory@Elsewhere.example is not in a domain allowed" in refused.text
        assert_signed_out(browser)


def test_an_allowed_domain_matches_after_the_last_at_sign_whatever_its_case(
    incident_environment, oidc_provider
):
    oidc_provider.user["email"] = '"odd@name"@Corp.EXAMPLE'
    settings = console_settings(oidc_provider, oidc_allowed_domains="corp.example")
    with console_client(settings) as browser:
        assert sign_in(browser, oidc_provider).status_code == 303
        assert browser.get(PAGE).status_code == 200


def test_an_unverified_e_mail_is_refused(browser, oidc_provider):
    oidc_provider.user["email_verified"] = False

    refused = sign_in(browser, oidc_provider)

    assert refused.status_code == 403
    assert "has not verified the e-mail address alice@example.com" in refused.text
    assert_signed_out(browser)


def test_a_refusal_by_the_provider_is_shown_not_a_500(browser, oidc_provider):
    oidc_provider.authorize_error = "access_denied"

    refused = sign_in(browser, oidc_provider)

    assert refused.status_code == 403
    assert "access_denied" in refused.text
    assert oidc_provider.token_requests == []
    assert_signed_out(browser)


def test_a_token_endpoint_in_trouble_is_shown_not_a_500(browser, oidc_provider):
    authorize = to_provider(browser, oidc_provider)
    callback = httpx.get(authorize, follow_redirects=False, timeout=10).headers["location"]
    oidc_provider.fail_next(status=503)

    refused = browser.get(callback)

    assert refused.status_code == 502
    assert "token endpoint did not answer" in refused.text
    assert_signed_out(browser)


def test_a_callback_this_browser_did_not_start_is_refused(browser, oidc_provider):
    authorize = to_provider(browser, oidc_provider)
    back = httpx.get(authorize, follow_redirects=False, timeout=10).headers["location"]
    forged = back.replace("state=", "state=forged")

    refused = browser.get(forged)

    assert refused.status_code == 400
    assert "state" in refused.text
    assert oidc_provider.token_requests == []
    assert_signed_out(browser)


def test_a_code_used_twice_is_refused_by_the_provider_and_leaves_no_session(
    browser, oidc_provider
):
    authorize = to_provider(browser, oidc_provider)
    callback = httpx.get(authorize, follow_redirects=False, timeout=10).headers["location"]
    stolen = TestClient(browser.app, follow_redirects=False)
    # Another browser with the first one's cookie replays the same callback after it.
    stolen.cookies.set(SESSION_COOKIE, browser.cookies[SESSION_COOKIE])
    assert browser.get(callback).status_code == 303

    replayed = stolen.get(callback)

    assert replayed.status_code == 400
    assert "invalid_grant" in replayed.text
    assert stolen.get(PAGE).status_code == 303


def test_the_session_cookie_is_httponly_and_lax_and_not_secure_over_http(
    browser, oidc_provider
):
    cookie = sign_in(browser, oidc_provider).headers["set-cookie"]

    attributes = [part.strip().lower() for part in cookie.split(";")]
    assert attributes[0].startswith(f"{SESSION_COOKIE}=")
    assert "httponly" in attributes
    assert "samesite=lax" in attributes
    assert "secure" not in attributes


def test_the_session_cookie_is_secure_with_an_https_public_url(
    incident_environment, oidc_provider
):
    settings = console_settings(oidc_provider, public_url="https://testserver")
    with console_client(settings, base_url="https://testserver") as browser:
        authorize = to_provider(browser, oidc_provider)
        assert parse_qs(urlsplit(authorize).query)["redirect_uri"] == [
            "https://testserver/auth/callback"
        ]
        done = through_provider(browser, authorize)

        assert done.status_code == 303
        attributes = [part.strip().lower() for part in done.headers["set-cookie"].split(";")]
        assert "secure" in attributes and "httponly" in attributes
        assert "samesite=lax" in attributes
        assert browser.get(PAGE).status_code == 200


def test_a_session_cookie_signed_with_another_secret_counts_as_signed_out(browser):
    session = {"user": {"email": "alice@example.com", "name": "Alice"}, "csrf": "x"}
    payload = base64.b64encode(json.dumps(session).encode())
    forged = TimestampSigner("some-other-secret").sign(payload).decode()
    browser.cookies.set(SESSION_COOKIE, forged)

    answer = browser.get(PAGE)

    assert answer.status_code == 303
    assert answer.headers["location"] == f"/login?next={PAGE}"


@pytest.mark.parametrize("next_path", [
    "//evil.example/steal", "https://evil.example/", "/\\evil.example", "evil.example",
])
def test_sign_in_never_returns_to_another_site(browser, oidc_provider, next_path):
    login = browser.get("/login", params={"next": next_path})
    assert login.status_code == 303

    done = through_provider(browser, login.headers["location"])

    assert done.status_code == 303
    assert done.headers["location"] == "/"


def test_login_when_already_signed_in_goes_straight_to_the_page(browser, oidc_provider):
    sign_in(browser, oidc_provider)

    again = browser.get("/login", params={"next": "/incidents/42"})

    assert again.status_code == 303
    assert again.headers["location"] == "/incidents/42"
    assert len(oidc_provider.authorizations) == 1


def test_signing_out_needs_the_forms_csrf_token(browser, oidc_provider):
    sign_in(browser, oidc_provider)
    form = browser.get("/logout")
    assert form.status_code == 200
    token = form.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]

    for forged in ({}, {"csrf": "forged"}):
        refused = browser.post("/logout", data=forged)
        assert refused.status_code == 403
        assert "security token" in refused.text
        assert browser.get(PAGE).status_code == 200  # still signed in

    done = browser.post("/logout", data={"csrf": token})
    assert done.status_code == 303
    assert done.headers["location"] == "/logout"
    assert "You are signed out" in browser.get("/logout").text
    assert_signed_out(browser)


def test_logout_is_a_form_post_not_a_link(browser, oidc_provider):
    sign_in(browser, oidc_provider)

    assert "Sign out" in browser.get("/logout").text
    assert browser.get(PAGE).status_code == 200  # GET /logout only shows the form


def test_an_unreachable_provider_is_a_clear_502_not_a_500(incident_environment):
    with FakeOIDCProvider() as provider:
        settings = console_settings(provider)
    # The provider has stopped: discovery cannot be fetched.
    with console_client(settings) as browser:
        answer = browser.get("/login", params={"next": "/"})

    assert answer.status_code == 502
    assert "could not be reached" in answer.text


def test_without_oidc_the_console_routes_answer_404_outside_dev(incident_environment):
    with console_client(Settings()) as browser:
        for path in ("/login", "/auth/callback", "/logout"):
            assert browser.get(path).status_code == 404
        assert browser.post("/logout").status_code == 404
        assert SESSION_COOKIE not in browser.get("/healthz").headers.get("set-cookie", "")


@pytest.mark.parametrize(("missing", "setting"), [
    ("oidc_client_secret", "INCIDENT_OIDC_CLIENT_SECRET"),
    ("session_secret", "INCIDENT_SESSION_SECRET"),
    ("oidc_issuer", "INCIDENT_OIDC_ISSUER"),
    ("oidc_client_id", "INCIDENT_OIDC_CLIENT_ID"),
])
def test_startup_is_refused_with_half_a_configuration_naming_what_is_missing(
    incident_environment, missing, setting
):
    values = {"oidc_issuer": "https://accounts.example", "oidc_client_id": CLIENT_ID,
              "oidc_client_secret": CLIENT_SECRET, "session_secret": SESSION_SECRET}
    del values[missing]

    with pytest.raises(ConfigurationError, match=setting):
        create_app(Settings(**values))


def test_incident_api_refuses_to_start_with_half_a_configuration(incident_environment):
    env = {**os.environ, "INCIDENT_OIDC_ISSUER": "https://accounts.example",
           "INCIDENT_OIDC_CLIENT_ID": CLIENT_ID, "INCIDENT_OIDC_CLIENT_SECRET": CLIENT_SECRET}
    env.pop("INCIDENT_SESSION_SECRET", None)

    started = subprocess.run(
        [sys.executable, "-m", "incident", "api", "--port", "1"],
        env=env, capture_output=True, text=True, timeout=60,
    )

    assert started.returncode == 2
    assert "INCIDENT_SESSION_SECRET" in started.stderr
    assert CLIENT_SECRET not in started.stderr + started.stdout
