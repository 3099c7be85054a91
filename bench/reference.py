"""The receiver's references: FastAPI reading a webhook's JSON, alone and with one Redis LPUSH.

bench.receiver runs each under uvicorn with as many processes as ``incident api``:
``bench.reference:parse_only`` and ``bench.reference:parse_and_lpush``.
"""

import os

import redis.asyncio
from fastapi import FastAPI, Request

QUEUE = "bench-reference"
parse_only, parse_and_lpush = FastAPI(), FastAPI()
broker = redis.asyncio.Redis.from_url(os.environ.get("INCIDENT_BROKER_URL", "redis://127.0.0.1"))


@parse_only.post("/webhooks/alertmanager", status_code=202)
async def parse(request: Request) -> dict:
    payload = await request.json()
    return {"status": "accepted", "alerts": len(payload["alerts"])}


@parse_and_lpush.post("/webhooks/alertmanager", status_code=202)
async def parse_and_push(request: Request) -> dict:
    payload = await request.json()
    await broker.lpush(QUEUE, await request.body())
    return {"status": "accepted", "alerts": len(payload["alerts"])}
