from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.oidc import FakeOIDCProvider


@pytest.fixture(scope="module")
def oidc_provider_server() -> Iterator[FakeOIDCProvider]:
    with FakeOIDCProvider() as provider:
        yield provider


@pytest.fixture
def oidc_provider(oidc_provider_server: FakeOIDCProvider) -> FakeOIDCProvider:
    """The fake provider, issuing honest tokens for alice@example.com."""
    oidc_provider_server.reset()
    return oidc_provider_server
