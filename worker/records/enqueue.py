"""One e-mail stored and its send task queued in one round trip: the HTTP API's enqueue.

The record, its indexes and the task on its broker list are written by one script
(``ENQUEUE``), so a record is never without its task and the API waits for Redis once per
e-mail. The script runs only while a guard key still holds the value the caller read (the
API's check that the caller's key was not revoked or changed meanwhile), and notes a last use.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from worker.records.codec import as_text, new_record_fields
from worker.records.keys import (
    DUE_KEY,
    idempotency_key,
    key_deliveries_key,
    record_key,
    status_index_key,
)
from worker.records.model import DeliveryStatus
from worker.records.scripts import ENQUEUE, Argument, Created
from worker.records.store import NewDelivery

__all__ = ["AsyncEnqueuer", "Enqueued", "Guard", "QueuedTask", "Touch"]


@dataclass(frozen=True, slots=True)
class QueuedTask:
    """A send task as the broker holds it: the list it is pushed on and its bytes, and an
    event to publish with it on ``event_channel`` (none when empty)."""

    queue: str
    message: bytes
    event_channel: str = ""
    event: bytes = b""


@dataclass(frozen=True, slots=True)
class Guard:
    """Write only while ``key`` holds exactly ``value``."""

    key: str
    value: bytes


@dataclass(frozen=True, slots=True)
class Touch:
    """``HSET hash field value`` with the write (a key's last use)."""

    hash: str
    field: str
    value: str


@dataclass(frozen=True, slots=True)
class Enqueued:
    """What the id's delivery is: new (``status`` None), or the one an idempotency key gave
    back, with its status now."""

    created: Created
    status: DeliveryStatus | None


class AsyncEnqueuer:
    """Creates one record with its task, on an asynchronous client."""

    def __init__(self, client: aioredis.Redis, *, retention_seconds: int) -> None:
        self._redis = client
        self._retention_seconds = retention_seconds
        self._enqueue = client.register_script(ENQUEUE)

    async def enqueue(
        self,
        delivery: NewDelivery,
        *,
        task: QueuedTask | None,
        guard: Guard | None = None,
        touch: Touch | None = None,
    ) -> Enqueued | None:
        """Store ``delivery`` and push ``task`` (None: a scheduled one, which the sweeper
        publishes when due); None when the guard refused, and nothing was written."""
        now = time.time()
        status = DeliveryStatus.QUEUED if delivery.send_at is None else DeliveryStatus.SCHEDULED
        fields = new_record_fields(
            delivery.message,
            created_at=now,
            idempotency_key=delivery.idempotency_key,
            priority=delivery.priority,
            created_by=delivery.created_by,
            idempotency_owner=delivery.idempotency_owner,
            send_at=delivery.send_at,
        )
        idempotency = delivery.idempotency_key
        keys = [
            record_key(delivery.id),
            status_index_key(status),
            idempotency_key(idempotency, delivery.idempotency_owner) if idempotency else "",
            key_deliveries_key(delivery.created_by) if delivery.created_by else "",
            DUE_KEY,
            guard.key if guard else "",
            task.queue if task else "",
            touch.hash if touch else "",
        ]
        args: list[Argument] = [
            delivery.id,
            repr(now),
            self._retention_seconds,
            repr(delivery.send_at) if delivery.send_at is not None else "",
            guard.value if guard else "",
            task.message if task else "",
            task.event_channel if task else "",
            task.event if task else "",
            touch.field if touch else "",
            touch.value if touch else "",
            *(item for pair in fields.items() for item in pair),
        ]
        reply = await self._enqueue(keys=keys, args=args)
        if int(reply[0]) == -1:
            return None
        created = Created(as_text(reply[1]), bool(int(reply[0])))
        if created.created:
            return Enqueued(created, None)
        existing = reply[2] if len(reply) > 2 else None
        return Enqueued(created, DeliveryStatus(as_text(existing)) if existing else None)

    async def push(self, task: QueuedTask) -> None:
        """Push a task (and its event) alone: a repeated idempotency key's delivery that is
        still queued may never have reached the broker (its producer died in between)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.lpush(task.queue, task.message)
        if task.event_channel:
            pipe.publish(task.event_channel, task.event)
        await pipe.execute()
