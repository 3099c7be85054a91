"""POST /webhooks/alertmanager: authenticate, bound, parse, validate, enqueue durably."""

from __future__ import annotations

import time

import orjson
import structlog
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from kombu.exceptions import OperationalError as BrokerUnavailable
from pydantic import ValidationError
from redis.exceptions import RedisError
from starlette.requests import ClientDisconnect

from incident.alerts.identity import group_hash
from incident.alerts.limits import oversized_label
from incident.alerts.schemas import Alert, WebhookPayload
from incident.api.errors import error_response, error_responses, validation_fields
from incident.incidents.ingest import INGEST_TASK, ingest_queue
from incident.metrics import count
from incident.tracing import context_headers
from incident.worker.app import app as celery_app
from incident.worker.publisher import TaskPublisher

log = structlog.get_logger(__name__)
router = APIRouter()

# Fail over to 503 quickly: Alertmanager retries, and a receiver stuck on a dead
# broker would only hold its connections open.
_PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


class PayloadTooLarge(Exception):
    pass


async def _read_bounded(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


# Alertmanager's payload is four levels deep; anything far deeper is not one,
# and would exhaust Python's recursion when the message is serialised.
MAX_DEPTH = 32


def _deeper_than(document: object, limit: int) -> str | None:
    """The path of the first value nested deeper than ``limit``, if any."""
    stack: list[tuple[object, int, str]] = [(document, 1, "")]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, dict):
            items = value.items()
        elif isinstance(value, list):
            items = enumerate(value)
        else:
            continue
        if depth > limit:
            # Name the field, not the run of list indices inside it.
            parts = path.split(".")
            while parts and parts[-1].isdigit():
                parts.pop()
            return ".".join(parts) or "(root)"
        stack.extend(
            (item, depth + 1, f"{path}.{key}" if path else str(key))
            for key, item in items
            if isinstance(item, dict | list)
        )
    return None


# Fields of the payload and of each alert that the schema knows: once it has
# validated them they are at most four levels deep, so only the others can be
# nested deeper than MAX_DEPTH.
_PAYLOAD_FIELDS = frozenset(
    alias for name, f in WebhookPayload.model_fields.items() for alias in (name, f.alias) if alias
)
_ALERT_FIELDS = frozenset(
    alias for name, f in Alert.model_fields.items() for alias in (name, f.alias) if alias
)


def _nested_unknown(document: dict, known: frozenset[str]) -> bool:
    """Whether a field the schema does not know holds an object or a list."""
    return any(
        key not in known and isinstance(value, dict | list) for key, value in document.items()
    )


def _deep_field_possible(raw: dict) -> bool:
    """Of a payload that validated: whether any of its values may be nested too deep."""
    return _nested_unknown(raw, _PAYLOAD_FIELDS) or any(
        _nested_unknown(alert, _ALERT_FIELDS) for alert in raw["alerts"]
    )


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def _summary(payload: WebhookPayload) -> str:
    # Flower and task events show kwargsrepr, never the payload itself.
    return repr({
        "group": group_hash(payload.receiver, payload.group_key)[:16],
        "status": payload.status,
        "alerts": len(payload.alerts),
    })


async def _enqueue(request: Request, raw: dict, payload: WebhookPayload, received_at: float) -> None:
    queue = ingest_queue(payload, request.app.state.rules)
    kwargs = {"payload": raw, "received_at": received_at}
    publisher: TaskPublisher | None = request.app.state.publisher
    if publisher is not None:
        await publisher.publish(INGEST_TASK, kwargs, queue=queue, kwargsrepr=_summary(payload))
        return
    # Another broker than Redis: Celery's own publish, which blocks, off the loop.
    # By name: the receiver never loads the worker's tasks.
    await run_in_threadpool(
        celery_app.send_task, INGEST_TASK, kwargs=kwargs, kwargsrepr=_summary(payload),
        queue=queue, retry=True, retry_policy=_PUBLISH_RETRY,
        # When tracing, the headers carry the request's trace context to the ingest task.
        headers=context_headers() or None,
    )


def _inline(schema: dict) -> dict:
    """A JSON schema with its ``$defs`` substituted in place, for the OpenAPI document."""
    definitions = schema.pop("$defs", {})

    def expand(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return expand(definitions[ref.removeprefix("#/$defs/")])
            return {key: expand(value) for key, value in node.items()}
        if isinstance(node, list):
            return [expand(item) for item in node]
        return node

    return expand(schema)


# The body is read by hand (bounded, streamed), so the document is told its shape.
_PAYLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {
            "schema": _inline(WebhookPayload.model_json_schema(by_alias=True))
        }},
    }
}
_ACCEPTED_SCHEMA = {
    "type": "object",
    "properties": {"status": {"type": "string"}, "alerts": {"type": "integer"}},
}


_OUTCOMES = {
    202: "accepted", 400: "bad_request", 401: "unauthorized", 413: "too_large", 415: "unsupported_media_type",
    422: "invalid", 503: "unavailable",
}


@router.post(
    "/webhooks/alertmanager",
    status_code=202,
    responses={
        202: {"description": "queued durably",
              "content": {"application/json": {"schema": _ACCEPTED_SCHEMA}}},
        **error_responses(400, 401, 413, 415, 422, 503),
    },
    openapi_extra=_PAYLOAD_BODY,
)
async def receive_alertmanager(request: Request) -> Response:
    response = await _receive(request)
    count("incident_webhooks", outcome=_OUTCOMES[response.status_code])
    return response


async def _receive(request: Request) -> Response:
    received_at = time.time()
    refusal = request.app.state.webhook_check.refusal(request.headers.get("authorization"))
    if refusal is not None:
        response = error_response(401, refusal)
        response.headers["WWW-Authenticate"] = "Bearer"
        return response
    settings = request.app.state.settings
    if not _is_json(request.headers.get("content-type", "")):
        return error_response(415, "Content-Type must be application/json")
    try:
        body = await _read_bounded(request, settings.max_body_bytes)
    except PayloadTooLarge:
        return error_response(413, f"payload larger than {settings.max_body_bytes} bytes")
    except ClientDisconnect:
        # Nobody is left to answer; Alertmanager will send it again.
        return error_response(400, "the client disconnected before sending the whole body")
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return error_response(400, f"body is not valid JSON: {exc}")
    if not isinstance(raw, dict):
        return error_response(
            422, "payload must be a JSON object",
            fields=[{"field": "", "message": "expected an object"}],
        )
    invalid: ValidationError | None = None
    try:
        payload = WebhookPayload.model_validate(raw)
    except ValidationError as exc:
        payload, invalid = None, exc
    if invalid is not None or _deep_field_possible(raw):
        # The rare case: the answer is as it always was, depth first.
        if (deep := _deeper_than(raw, MAX_DEPTH)) is not None:
            message = f"nested deeper than {MAX_DEPTH} levels"
            return error_response(422, f"payload {message}",
                                  fields=[{"field": deep, "message": message}])
        if invalid is not None:
            return error_response(
                422, "not an Alertmanager version 4 payload", fields=validation_fields(invalid)
            )
    if (oversized := oversized_label(payload)) is not None:
        return error_response(
            422, oversized.message, fields=[{"field": oversized.field, "message": oversized.message}]
        )
    try:
        # On the event loop: the rules' regexes are RE2's, linear in each value
        # (16 KiB at most), so /healthz never waits long behind them.
        await _enqueue(request, raw, payload, received_at)
    except (BrokerUnavailable, RedisError, OSError) as exc:
        log.error("could not enqueue webhook", error=str(exc))
        return error_response(503, "could not enqueue durably; retry later")
    count("incident_alerts_received", len(payload.alerts))
    return _accepted(len(payload.alerts))


def _accepted(alerts: int) -> Response:
    return Response(
        b'{"status":"accepted","alerts":%d}' % alerts, status_code=202,
        media_type="application/json",
    )
