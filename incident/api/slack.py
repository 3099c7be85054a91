"""POST /slack/interactions: Slack's Interactivity Request URL.

Refused with 401 before anything is parsed unless Slack signed it within the
last five minutes and this signature has not been seen before; then the one
click it carries is read, handed to a worker by task name, and answered 200
at once (Slack wants an answer within 3 s). Without
INCIDENT_SLACK_SIGNING_SECRET the route does not exist (404).
"""

from __future__ import annotations

from dataclasses import asdict
from urllib.parse import parse_qs

import orjson
import structlog
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from kombu.exceptions import OperationalError as BrokerUnavailable
from redis.exceptions import RedisError
from starlette.requests import ClientDisconnect

from incident import keys
from incident.api.errors import error_response, error_responses, validation_fields
from incident.api.webhooks import PayloadTooLarge, _read_bounded
from incident.integrations.slack_interactivity import SIGNATURE_WINDOW_SECONDS, signed_by_slack
from incident.interactions.schemas import BadClick, Click, ValidationError, read_click
from incident.interactions.service import CLICK_TASK, with_response_url
from incident.queues import PAGE
from incident.worker.app import app as celery_app

log = structlog.get_logger(__name__)
router = APIRouter()

# A click's payload repeats the whole message it came from: at most 50 blocks
# of a few KiB each, form-encoded.
MAX_BODY_BYTES = 1024 * 1024
_PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}

_FORM_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/x-www-form-urlencoded": {"schema": {
            "type": "object", "required": ["payload"],
            "properties": {"payload": {"type": "string",
                                       "description": "the block_actions payload, as JSON"}},
        }}},
    }
}


class Refused(Exception):
    def __init__(
        self, status: int, message: str, fields: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.fields = status, message, fields

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, fields=self.fields)


@router.post(
    "/slack/interactions",
    responses={200: {"description": "taken; the click is acted on by a worker"},
               **error_responses(400, 401, 404, 413, 422, 503)},
    openapi_extra=_FORM_BODY,
)
async def slack_interactions(request: Request) -> Response:
    context = request.app.state.context
    secret = context.settings.slack_signing_secret
    if secret is None:
        return error_response(404, "Slack interactivity is off: INCIDENT_SLACK_SIGNING_SECRET is not set")
    try:
        body = await _read_bounded(request, MAX_BODY_BYTES)
        signature = await _verified(request, body, secret.get_secret_value())
        await run_in_threadpool(_first_sighting, context.redis, signature)
        click, response_url = _click(body)
        await run_in_threadpool(_enqueue, context, click, response_url)
    except Refused as refused:
        return refused.response()
    except PayloadTooLarge:
        return error_response(413, f"body larger than {MAX_BODY_BYTES} bytes")
    except ClientDisconnect:
        return error_response(400, "the client disconnected before sending the whole body")
    except (BrokerUnavailable, RedisError, OSError) as exc:
        log.error("could not take a Slack click", error=type(exc).__name__)
        return error_response(503, "could not take the click; try again")
    return Response(status_code=200)


async def _verified(request: Request, body: bytes, secret: str) -> str:
    timestamp = request.headers.get("x-slack-request-timestamp")
    signature = request.headers.get("x-slack-signature")
    if not timestamp or not signature:
        raise Refused(401, "missing X-Slack-Request-Timestamp or X-Slack-Signature")
    if not signed_by_slack(secret, body, timestamp, signature):
        raise Refused(401, "bad signature, or a timestamp more than 5 minutes away")
    return signature


def _first_sighting(client, signature: str) -> None:
    # Remembered a little longer than the window, so clock skew cannot reopen it.
    fresh = client.set(keys.SLACK_SEEN_SIGNATURE + signature, 1, nx=True,
                       ex=2 * SIGNATURE_WINDOW_SECONDS)
    if not fresh:
        raise Refused(401, "this request was already received (a replay)")


def _click(body: bytes) -> tuple[Click, str | None]:
    try:
        form = parse_qs(body.decode("utf-8"), strict_parsing=False, max_num_fields=20)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refused(400, f"the body is not a form: {exc}") from exc
    values = form.get("payload")
    if not values:
        raise Refused(422, "the form has no payload",
                      fields=[{"field": "payload", "message": "missing"}])
    try:
        payload = orjson.loads(values[0])
    except orjson.JSONDecodeError as exc:
        raise Refused(400, f"payload is not valid JSON: {exc}") from exc
    try:
        return read_click(payload)
    except BadClick as exc:
        raise Refused(422, f"payload.{exc.field}: {exc.message}",
                      fields=[{"field": f"payload.{exc.field}", "message": exc.message}]) from exc
    except ValidationError as exc:
        fields = [{**one, "field": f"payload.{one['field']}".rstrip(".")}
                  for one in validation_fields(exc)]
        raise Refused(422, "not a block_actions payload from our controls", fields=fields) from exc


def _enqueue(context, click: Click, response_url: str | None) -> None:
    click = with_response_url(click, response_url, context.redis)
    shown = {name: value for name, value in asdict(click).items() if name != "response_key"}
    # By name: the api never loads the worker's tasks. Flower shows kwargsrepr.
    celery_app.send_task(
        CLICK_TASK, kwargs=asdict(click), kwargsrepr=repr(shown), queue=PAGE, retry=True,
        retry_policy=_PUBLISH_RETRY,
    )
