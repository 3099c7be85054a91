"""GET /api/breakers: every remediation circuit breaker the fleet shares, as Redis holds it."""

from __future__ import annotations

import redis
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from incident.api.auth import require_api_token
from incident.api.errors import error_response, error_responses
from incident.remediation.breaker import CircuitBreakers
from incident.sharedstate import redis_for

router = APIRouter(
    prefix="/api", dependencies=[Depends(require_api_token)], responses=error_responses(401, 503)
)


class BreakerOut(BaseModel):
    remediation: str
    key: str | None
    state: str  # closed | open | half_open
    consecutive_failures: int
    failure_threshold: int
    reset_after_seconds: float
    opened_at: str | None
    next_trial_at: str | None


class BreakerPage(BaseModel):
    items: list[BreakerOut]


@router.get("/breakers", response_model=BreakerPage)
async def list_breakers(request: Request) -> BreakerPage | JSONResponse:
    """Breakers that have seen an outcome; ``half_open`` means the next attempt is a trial."""
    client = redis_for(request.app.state.settings.shared_redis_url)
    try:
        states = await run_in_threadpool(CircuitBreakers(client).states)
    except redis.RedisError as exc:
        return error_response(503, f"breaker state is in Redis, which is unavailable: {exc}")
    return BreakerPage(items=[BreakerOut(**state) for state in states])
