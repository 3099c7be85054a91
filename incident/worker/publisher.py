"""Celery task messages pushed straight onto their Redis queue, from asyncio.

The receiver publishes one message per webhook. Through ``send_task`` that
took a thread hop (kombu is synchronous), kombu's producer and channel
machinery and a synchronous client: several times the one LPUSH that makes
the message durable. Here Celery still builds the task message
(``app.amqp.create_task_message``: protocol 2, its headers, body and
properties, as ``send_task`` asks for them), and the envelope is the one
kombu's Redis transport writes (``prepare_message`` and
``_inplace_augment_message`` of its virtual channel: JSON body, base64-encoded,
a delivery tag), so a worker, Flower and ``celery inspect`` see the same task.
Only the LPUSH is ours: one command on a kept-open redis.asyncio pool.

Celery's ``before_task_publish``/``after_task_publish`` signals are not sent
for these messages; :func:`task_headers` is where their headers are made, so
whatever a signal handler would add to them (trace context) goes there.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections import deque
from collections.abc import Mapping
from typing import Any

import orjson
import redis.asyncio
from celery import Celery
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from celery.utils.nodenames import anon_nodename

from incident.tracing import context_headers

# Schemes whose broker is one Redis that redis.asyncio reaches by the same URL.
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


CLIENT_NAME = "incident-publisher"
# The most one LPUSH carries, so that a burst of large webhooks is not one huge command.
BATCH_MESSAGES = 64
BATCH_BYTES = 1 << 20
# The third part of a protocol 2 body: no callbacks, errbacks, chain or chord.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def direct_url(broker_url: str) -> str | None:
    """The Redis URL to push to for this broker, or None when it is not a plain Redis."""
    if broker_url.startswith("redis+socket://"):
        return "unix://" + broker_url.removeprefix("redis+socket://")
    return broker_url if broker_url.startswith(_REDIS_SCHEMES) else None


def task_headers(message_headers: dict[str, Any]) -> dict[str, Any]:
    """The message headers of one task, as published: the one place to add to them.

    ``message_headers`` are Celery's (task name, id, kwargsrepr, origin, …).
    The trace context (W3C ``traceparent``) is added here, where Celery's
    ``before_task_publish`` handlers would have put it.
    """
    if trace := context_headers():
        return {**message_headers, **trace}
    return message_headers


class _Batch:
    """Messages for one queue that go out in one LPUSH, and the answer they wait for."""

    __slots__ = ("done", "size", "values")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.values: list[bytes] = []
        self.size = 0
        self.done: asyncio.Future[None] = loop.create_future()
        # Every waiter may have gone (clients hung up): the outcome is still "retrieved".
        self.done.add_done_callback(lambda f: f.cancelled() or f.exception())


class _Pusher:
    """LPUSHes onto Redis lists from one event loop, over one kept-open client.

    While a queue's LPUSH is on its way, the messages that arrive meanwhile
    wait together and go out in the next one: LPUSH takes many values and
    stores them all or none, so under load one command (one write, one reply,
    one fsync with ``appendfsync always``) queues several webhooks, and an idle
    receiver still sends each message at once. Kombu's consumers pop from the
    other end, so the order of arrival is kept.
    """

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self._waiting: dict[str, deque[_Batch]] = {}
        # Each queue's sender while it runs (kept, as the loop holds tasks only weakly).
        self._sending: dict[str, asyncio.Task[None]] = {}

    async def push(self, queue: str, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        batches = self._waiting.setdefault(queue, deque())
        if not batches or batches[-1].size + len(data) > BATCH_BYTES or (
            len(batches[-1].values) >= BATCH_MESSAGES
        ):
            batches.append(_Batch(loop))
        batch = batches[-1]
        batch.values.append(data)
        batch.size += len(data)
        if queue not in self._sending:
            self._sending[queue] = loop.create_task(self._send(queue))
        # Shielded: a client that hangs up must not cancel its neighbours' push.
        await asyncio.shield(batch.done)

    async def _send(self, queue: str) -> None:
        batches = self._waiting[queue]
        try:
            while batches:
                batch = batches.popleft()
                try:
                    await self.client.lpush(queue, *batch.values)
                except BaseException as exc:
                    batch.done.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                else:
                    batch.done.set_result(None)
        finally:
            del self._sending[queue]


class TaskPublisher:
    """Builds Celery task messages and LPUSHes them onto their queue's list.

    One redis.asyncio client per event loop, so its connections stay open
    from one request to the next and never cross loops.
    """

    def __init__(self, celery_app: Celery, url: str, *, socket_timeout: float = 5.0) -> None:
        self.celery_app = celery_app
        self.url = url
        self.socket_timeout = socket_timeout
        self._origin = anon_nodename()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pusher: _Pusher | None = None
        self._templates: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]] = {}

    def _pusher_for_loop(self) -> _Pusher:
        loop = asyncio.get_running_loop()
        if self._pusher is None or self._loop is not loop:
            self._loop = loop
            self._pusher = _Pusher(redis.asyncio.Redis.from_url(
                self.url, socket_connect_timeout=3, socket_timeout=self.socket_timeout,
                # Fail over quickly: the caller answers 503 and Alertmanager retries.
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.1), 2),
                # Named, so that `CLIENT LIST` tells the receiver's connections apart.
                client_name=CLIENT_NAME,
            ))
        return self._pusher

    def message(
        self, task: str, kwargs: Mapping[str, Any], *, queue: str, kwargsrepr: str
    ) -> tuple[str, bytes]:
        """The task's id, and the message as kombu's Redis transport stores it."""
        headers, properties = self._template(task, queue)
        task_id = str(uuid.uuid4())
        envelope = {
            "body": base64.b64encode(orjson.dumps(((), kwargs, _EMBED))).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": task_headers(
                {**headers, "id": task_id, "root_id": task_id, "kwargsrepr": kwargsrepr}
            ),
            "properties": {
                **properties,
                "correlation_id": task_id,
                "kwargsrepr": kwargsrepr,
                "delivery_tag": str(uuid.uuid4()),
            },
        }
        return task_id, orjson.dumps(envelope)

    def _template(self, task: str, queue: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Celery's headers and kombu's properties for ``task`` on ``queue``, made once.

        What differs from one message to the next (the id, kwargsrepr, the
        delivery tag) is filled in by :meth:`message`.
        """
        key = (task, queue)
        if (template := self._templates.get(key)) is None:
            # What send_task asks Celery for, with its defaults spelled out.
            built = self.celery_app.amqp.create_task_message(
                "", task, (), {}, reply_to=self.celery_app.thread_oid,
                create_sent_event=False, ignore_result=None, kwargsrepr="", origin=self._origin,
            )
            if built.body[2] != _EMBED:
                raise RuntimeError(f"Celery's task body changed: {built.body!r}")
            properties = {
                **built.properties,
                "delivery_mode": 2,
                # The default exchange: the routing key is the queue.
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
            }
            template = self._templates[key] = (built.headers, properties)
        return template

    async def publish(
        self, task: str, kwargs: Mapping[str, Any], *, queue: str, kwargsrepr: str
    ) -> str:
        """Queue one task durably: returns its id once Redis has the message.

        Raises redis's ConnectionError or TimeoutError when it could not.
        """
        task_id, data = self.message(task, kwargs, queue=queue, kwargsrepr=kwargsrepr)
        await self._pusher_for_loop().push(queue, data)
        return task_id

    async def close(self) -> None:
        if self._pusher is not None and self._loop is asyncio.get_running_loop():
            await self._pusher.client.aclose()
        self._pusher = self._loop = None
