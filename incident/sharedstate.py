"""The Redis that holds state shared by every process: caches, locks, breakers, buckets."""

from __future__ import annotations

from functools import lru_cache

import redis

from incident.config import get_settings


@lru_cache(maxsize=4)
def redis_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_connect_timeout=3, socket_timeout=5, health_check_interval=30
    )


def get_redis() -> redis.Redis:
    return redis_for(get_settings().shared_redis_url)
