"""One JSON shape for every error the API returns."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import ValidationError


def error_response(
    status_code: int, message: str, *, fields: list[dict[str, str]] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if fields is not None:
        body["fields"] = fields
    return JSONResponse(body, status_code=status_code)


def validation_fields(exc: ValidationError) -> list[dict[str, str]]:
    """Each failing field as a dotted path (``alerts.0.fingerprint``) and why."""
    return [
        {"field": ".".join(str(part) for part in err["loc"]), "message": err["msg"]}
        for err in exc.errors(include_input=False, include_url=False)
    ]
