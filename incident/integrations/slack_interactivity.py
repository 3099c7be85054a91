"""Slack interactivity, the vendor side: checking that a request comes from
Slack, and answering a click through its ``response_url``.

Both use slack_sdk's own code (``SignatureVerifier``, ``WebhookClient``).
A ``response_url`` lets anyone who holds it post to the user who clicked, so
it is never logged, here or by the SDK.
"""

from __future__ import annotations

import logging
from http.client import HTTPException

import structlog
from slack_sdk.signature import SignatureVerifier
from slack_sdk.webhook import WebhookClient

log = structlog.get_logger(__name__)

# Slack's own window, which SignatureVerifier applies: a request whose
# timestamp is further than this from our clock is refused.
SIGNATURE_WINDOW_SECONDS = 5 * 60
RESPONSE_TIMEOUT_SECONDS = 5

# The SDK logs each request's URL at debug level: keep it quiet.
_sdk_log = logging.getLogger("incident.slack.response_url")
_sdk_log.setLevel(logging.WARNING)


def signed_by_slack(
    signing_secret: str, body: bytes, timestamp: str | None, signature: str | None
) -> bool:
    """Whether ``signature`` is Slack's for ``body`` at ``timestamp``, within the window."""
    if not timestamp or not signature:
        return False
    try:
        return SignatureVerifier(signing_secret).is_valid(body, timestamp, signature)
    except (ValueError, UnicodeDecodeError):
        # A timestamp that is not a number, or a body that is not UTF-8.
        return False


def post_ephemeral(response_url: str, text: str) -> bool:
    """Show ``text`` to the user who clicked, only to them; False when Slack did not take it."""
    client = WebhookClient(
        response_url, timeout=RESPONSE_TIMEOUT_SECONDS, logger=_sdk_log, retry_handlers=[]
    )
    try:
        response = client.send(text=text, response_type="ephemeral", replace_original=False)
    except (OSError, HTTPException) as exc:
        log.warning("could not answer a Slack click", error=type(exc).__name__)
        return False
    if response.status_code != 200:
        log.warning("Slack refused the answer to a click", status=response.status_code)
        return False
    return True
