"""kombu's Redis transport, with a channel that keeps one client for publishing.

kombu builds a new ``redis.Redis`` for each command it sends outside its
consumer loop. With redis-py 6 and later that construction alone costs about
0.4 ms, more than the LPUSH it wraps, and it is on the receiver's hot path for
every webhook. The message format and everything else stay kombu's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _publish_client: redis.Redis | None = None

    @contextmanager
    def conn_or_acquire(self, client: redis.Redis | None = None) -> Iterator[redis.Redis]:
        if client is not None:
            yield client
            return
        # A channel serves one thread at a time, and the client's connection
        # pool is thread-safe, so one client per channel is enough.
        if self._publish_client is None:
            self._publish_client = self._create_client()
        yield self._publish_client


class Transport(kombu_redis.Transport):
    Channel = Channel


TRANSPORT = f"{__name__}:Transport"
