"""POST /webhooks/pagerduty: PagerDuty V3 webhooks, verified, then queued for a worker.

The signature is checked on the raw body before anything is parsed. The
event is answered 2xx only once it is on the broker (or is of a type we do not
act on); a worker applies it (notifications/pagerduty_events.py).
"""

from __future__ import annotations

import hashlib
import hmac

import orjson
import structlog
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as BrokerUnavailable
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from incident.api.errors import error_response, error_responses, validation_fields
from incident.api.webhooks import PayloadTooLarge, _read_bounded
from incident.notifications.pagerduty_events import APPLY_TASK, Envelope, Event, Webhook
from incident.queues import PAGE
from incident.worker.app import app as celery_app

log = structlog.get_logger(__name__)
router = APIRouter()

ROUTE = "/webhooks/pagerduty"
SIGNATURE_HEADER = "X-PagerDuty-Signature"
# A V3 event is a few kilobytes; nothing PagerDuty sends comes near this.
MAX_BODY_BYTES = 1024 * 1024
_PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


def signed_by(secret: str, body: bytes, header: str | None) -> bool:
    """Whether one of the header's ``v1=`` signatures (several while a secret is
    rotated) is the hex HMAC-SHA256 of ``body`` under ``secret``."""
    if not header:
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest().encode()
    valid = False
    for part in header.split(","):
        scheme, _, signature = part.strip().partition("=")
        if scheme != "v1" or not signature.isascii():
            continue
        # Every candidate is compared, in constant time each.
        valid |= hmac.compare_digest(expected, signature.encode())
    return valid


def _enqueue(event: Event) -> None:
    celery_app.send_task(
        APPLY_TASK,
        kwargs={"event": event.model_dump(mode="json", exclude_none=True)},
        kwargsrepr=repr(event.summary()),
        queue=PAGE,
        retry=True,
        retry_policy=_PUBLISH_RETRY,
    )


_ERRORS = error_responses(400, 401, 404, 413, 422, 503)
_ERRORS[401]["description"] = f"{SIGNATURE_HEADER} missing, or none of its signatures valid"
_ERRORS[404]["description"] = "off: INCIDENT_PAGERDUTY_WEBHOOK_SECRET is unset"

_ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"status": {"type": "string"}, "event_type": {"type": "string"}},
}


@router.post(
    ROUTE,
    status_code=202,
    responses={
        200: {"description": "an event type we do not act on: ignored",
              "content": {"application/json": {"schema": _ANSWER_SCHEMA}}},
        202: {"description": "queued durably",
              "content": {"application/json": {"schema": _ANSWER_SCHEMA}}},
        **_ERRORS,
    },
    openapi_extra={"requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object"}}},
    }},
)
async def receive_pagerduty(request: Request) -> JSONResponse:
    secret = request.app.state.settings.pagerduty_webhook_secret
    if secret is None:
        return error_response(404, "PagerDuty webhooks are off (INCIDENT_PAGERDUTY_WEBHOOK_SECRET)")
    try:
        body = await _read_bounded(request, MAX_BODY_BYTES)
    except PayloadTooLarge:
        return error_response(413, f"payload larger than {MAX_BODY_BYTES} bytes")
    except ClientDisconnect:
        return error_response(400, "the client disconnected before sending the whole body")
    if not signed_by(secret.get_secret_value(), body, request.headers.get(SIGNATURE_HEADER)):
        log.warning("pagerduty webhook with a bad or missing signature")
        return error_response(401, f"{SIGNATURE_HEADER} does not sign this body")
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return error_response(400, f"body is not valid JSON: {exc}")
    try:
        head = Envelope.model_validate(raw).event
        structlog.contextvars.bind_contextvars(**head.summary())
        if not head.handled:
            log.info("pagerduty event of a type we do not act on, ignored")
            return JSONResponse({"status": "ignored", "event_type": head.event_type},
                                status_code=200)
        event = Webhook.model_validate(raw).event
    except ValidationError as exc:
        return error_response(422, "not a PagerDuty V3 webhook", fields=validation_fields(exc))
    try:
        await run_in_threadpool(_enqueue, event)
    except (BrokerUnavailable, OSError) as exc:
        log.error("could not enqueue pagerduty event", error=str(exc))
        return error_response(503, "could not enqueue durably; retry later")
    return JSONResponse({"status": "accepted", "event_type": event.event_type}, status_code=202)
