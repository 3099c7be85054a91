"""One JSON shape for every error the API returns."""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError


def error_response(
    status_code: int, message: str, *, fields: list[dict[str, str]] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if fields is not None:
        body["fields"] = fields
    return JSONResponse(body, status_code=status_code)


def validation_fields(exc: ValidationError | RequestValidationError) -> list[dict[str, str]]:
    """Each failing field as a dotted path (``alerts.0.fingerprint``, ``query.limit``) and why."""
    if isinstance(exc, RequestValidationError):
        errors = exc.errors()
    else:
        errors = exc.errors(include_input=False, include_url=False)
    fields = []
    for err in errors:
        loc, message = list(err["loc"]), err["msg"]
        if loc and loc[-1] == "[key]":
            # pydantic's marker for a bad mapping key: name the key, say it is the key.
            loc, message = loc[:-1], f"the key: {message}"
        fields.append({"field": ".".join(str(part) for part in loc), "message": message})
    return fields


ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string"},
        "fields": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses, in our one error shape."""
    return {
        code: {"description": _DESCRIPTIONS.get(code, "error"),
               "content": {"application/json": {"schema": ERROR_SCHEMA}}}
        for code in codes
    }


_DESCRIPTIONS = {
    400: "not JSON, or not readable", 401: "missing or wrong bearer token",
    404: "no such incident", 409: "not allowed in the incident's status",
    413: "body too large", 415: "not application/json", 422: "invalid, with each failing field",
    502: "a dependency refused the request, saying why",
    503: "a dependency is unavailable; retry",
}
