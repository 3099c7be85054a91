"""Every console page needs sign-in; `incident dev` signs in a local user; off otherwise."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from incident.console.local import LOCAL_USER
from tests.conftest import API_TOKEN
from tests.console.conftest import console_client, csrf_of

PAGES = ["/", "/incidents/1", "/stats", "/?status=triggered&q=api"]


@pytest.mark.parametrize("page", PAGES)
def test_a_page_without_a_session_redirects_to_sign_in_and_back(console, page):
    asked = console.get(page, follow_redirects=False)
    assert asked.status_code == 303
    assert asked.headers["location"].startswith("/login?next=")

    signing_in = console.get(asked.headers["location"], follow_redirects=False)
    assert signing_in.status_code == 303
    assert signing_in.headers["location"] == page


def test_the_local_user_is_named_on_every_page(signed_in):
    for page in ("/", "/stats"):
        answer = signed_in.get(page)
        assert answer.status_code == 200
        assert LOCAL_USER.email in answer.text
        assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in answer.text
        assert answer.headers["x-frame-options"] == "DENY"


def test_sign_in_goes_back_only_to_this_site(console):
    for hostile in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        answer = console.get("/login", params={"next": hostile}, follow_redirects=False)
        assert answer.headers["location"] == "/"


def test_sign_out_needs_the_form_token_then_ends_the_session(signed_in):
    for forged in ("forged", "é", "😀" * 40):
        assert signed_in.post("/logout", data={"csrf": forged}).status_code == 403
    assert signed_in.get("/", follow_redirects=False).status_code == 200

    token = csrf_of(signed_in, "/")
    done = signed_in.post("/logout", data={"csrf": token}, follow_redirects=False)
    assert (done.status_code, done.headers["location"]) == (303, "/logout")
    assert "You are signed out" in signed_in.get("/logout").text
    assert signed_in.get("/", follow_redirects=False).status_code == 303


def test_the_console_is_404_without_a_sign_in_and_the_api_unchanged(clean_state):
    with console_client(dev_mode=False) as client:
        for page in ("/", "/incidents/1", "/stats", "/login", "/static/console.css"):
            assert client.get(page, follow_redirects=False).status_code == 404, page
        assert client.post("/logout").status_code == 404
        assert client.get("/api/incidents", headers={"Authorization": f"Bearer {API_TOKEN}"}).status_code == 200
        assert "set-cookie" not in client.get("/healthz").headers


def test_with_oidc_configured_the_local_sign_in_is_not_there(clean_state):
    with console_client(dev_mode=True, oidc_issuer="https://id.example.com",
                        oidc_client_id="incident", oidc_client_secret=SecretStr("s"),
                        session_secret=SecretStr("t")) as client:
        # Sign-in is then the provider's: never the local user.
        answer = client.get("/login", follow_redirects=False)
        assert "set-cookie" not in answer.headers or LOCAL_USER.email not in answer.text
        assert client.get("/", follow_redirects=False).status_code == 303
