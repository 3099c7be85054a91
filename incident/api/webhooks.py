"""POST /webhooks/alertmanager: authenticate, bound, parse, validate, enqueue durably."""

from __future__ import annotations

import time

import orjson
import structlog
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as BrokerUnavailable
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from incident.alerts.identity import group_hash
from incident.alerts.limits import oversized_label
from incident.alerts.schemas import WebhookPayload
from incident.api.auth import require_webhook_token
from incident.api.errors import error_response, error_responses, validation_fields
from incident.incidents.ingest import INGEST_TASK, ingest_queue
from incident.metrics import count
from incident.tracing import context_headers
from incident.rules import Rules
from incident.worker.app import app as celery_app

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


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def _classify_and_enqueue(raw: dict, payload: WebhookPayload, rules: Rules) -> None:
    # Both off the event loop: classifying runs the rules' regexes over every
    # label value, and /healthz must answer while it does.
    _enqueue(raw, payload, ingest_queue(payload, rules))


def _enqueue(raw: dict, payload: WebhookPayload, queue: str) -> None:
    # Flower and task events show kwargsrepr, never the payload itself.
    summary = {
        "group": group_hash(payload.receiver, payload.group_key)[:16],
        "status": payload.status,
        "alerts": len(payload.alerts),
    }
    # By name: the receiver never loads the worker's tasks. When tracing, the
    # headers carry the request's trace context to the ingest task.
    celery_app.send_task(
        INGEST_TASK,
        # received_at: the accept time the latency histograms count from.
        kwargs={"payload": raw, "received_at": time.time()},
        kwargsrepr=repr(summary),
        queue=queue,
        retry=True,
        retry_policy=_PUBLISH_RETRY,
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


def _authenticated(request: Request) -> None:
    try:
        require_webhook_token(request)
    except HTTPException:
        count("incident_webhooks", outcome="unauthorized")
        raise


_OUTCOMES = {
    202: "accepted", 400: "bad_request", 413: "too_large", 415: "unsupported_media_type",
    422: "invalid", 503: "unavailable",
}


@router.post(
    "/webhooks/alertmanager",
    status_code=202,
    dependencies=[Depends(_authenticated)],
    responses={
        202: {"description": "queued durably",
              "content": {"application/json": {"schema": _ACCEPTED_SCHEMA}}},
        **error_responses(400, 401, 413, 415, 422, 503),
    },
    openapi_extra=_PAYLOAD_BODY,
)
async def receive_alertmanager(request: Request) -> JSONResponse:
    response = await _receive(request)
    count("incident_webhooks", outcome=_OUTCOMES[response.status_code])
    return response


async def _receive(request: Request) -> JSONResponse:
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
    if (deep := _deeper_than(raw, MAX_DEPTH)) is not None:
        message = f"nested deeper than {MAX_DEPTH} levels"
        return error_response(422, f"payload {message}",
                              fields=[{"field": deep, "message": message}])
    try:
        payload = WebhookPayload.model_validate(raw)
    except ValidationError as exc:
        return error_response(
            422, "not an Alertmanager version 4 payload", fields=validation_fields(exc)
        )
    if (oversized := oversized_label(payload)) is not None:
        return error_response(
            422, oversized.message, fields=[{"field": oversized.field, "message": oversized.message}]
        )
    try:
        await run_in_threadpool(_classify_and_enqueue, raw, payload, request.app.state.rules)
    except (BrokerUnavailable, OSError) as exc:
        log.error("could not enqueue webhook", error=str(exc))
        return error_response(503, "could not enqueue durably; retry later")
    count("incident_alerts_received", len(payload.alerts))
    return JSONResponse({"status": "accepted", "alerts": len(payload.alerts)}, status_code=202)
