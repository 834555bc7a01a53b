"""The producer API: validate, store and enqueue e-mails; retry failed ones."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from config.errors import (
    DeliveryNotFoundError,
    InvalidInputError,
    MessageTooLargeError,
    NotRetryableError,
    TooManyRecipientsError,
)
from config.process import DEFAULT_MAX_RECIPIENTS
from tasks.message_input import MessageInput
from worker.records import (
    CancelOutcome,
    Created,
    DeliveryRecord,
    DeliveryStatus,
    DeliveryStore,
    NewDelivery,
    Priority,
)
from worker.records.enqueue import AsyncEnqueuer, Enqueued, Guard, QueuedTask, Touch
from worker.records.replication import ReplicaWait

__all__ = [
    "CHUNK_SIZE",
    "AsyncEnqueue",
    "Producer",
    "Publisher",
    "TaskBuilder",
    "cancel_summary",
    "chunked",
]

# Ids per task message: one Celery message per e-mail caps throughput far below SMTP's;
# each id in a chunk is still claimed and recorded on its own.
CHUNK_SIZE = 50


class Publisher(Protocol):
    """Hands chunks of delivery ids to the broker, in the queue of their priority."""

    def __call__(self, chunks: Sequence[Sequence[str]], *, priority: Priority) -> None: ...


def chunked(delivery_ids: Sequence[str]) -> list[Sequence[str]]:
    """The ids in chunks of CHUNK_SIZE, one task each."""
    return [delivery_ids[i : i + CHUNK_SIZE] for i in range(0, len(delivery_ids), CHUNK_SIZE)]


def cancel_summary(outcomes: Sequence[CancelOutcome]) -> dict[str, Any]:
    """A bulk cancel's answer, as the API and ``outbox cancel --json`` give it."""
    return {
        "cancelled": [each.id for each in outcomes if each.cancelled],
        "not_cancelled": [
            {"id": each.id, "status": each.status.value, "reason": each.reason}
            for each in outcomes
            if not each.cancelled
        ],
    }


class Producer:
    """Turns validated messages into stored, queued deliveries."""

    def __init__(
        self,
        deliveries: DeliveryStore,
        publish: Publisher,
        *,
        message_id_domain: str,
        max_message_bytes: int,
        max_recipients: int = DEFAULT_MAX_RECIPIENTS,
        replicas: ReplicaWait | None = None,
    ) -> None:
        self._deliveries = deliveries
        self._replicas = replicas
        self._publish = publish
        self._domain = message_id_domain
        self._max_message_bytes = max_message_bytes
        self._max_recipients = max_recipients

    def enqueue(self, message: MessageInput, *, created_by: str | None = None) -> Created:
        return self.enqueue_many([message], created_by=created_by)[0]

    def enqueue_many(
        self,
        messages: Sequence[MessageInput],
        *,
        created_by: str | None = None,
        shared_idempotency: bool = False,
    ) -> list[Created]:
        """Store the messages and queue them a chunk (one task) at a time, so workers send the
        first while the rest are still being stored.

        Every message's limits are checked first: one refused message stores none. A chunk
        the broker does not take is recorded failed, nothing after it is stored, and the
        broker's error is raised. ``created_by`` is the API key that sent them: their idempotency
        keys are its own (unless ``shared_idempotency``: keys that name a shared thing, such as a
        schedule's run), and it may read them.
        """
        for message in messages:
            self.check_limits(message)
        self._require_replicas()
        created: list[Created] = []
        for start in range(0, len(messages), CHUNK_SIZE):
            stored, to_queue = self._store(
                messages[start : start + CHUNK_SIZE],
                created_by,
                idempotency_owner=None if shared_idempotency else created_by,
            )
            self._queue(to_queue)
            created += stored
        self._confirm_replicated()
        return created

    def _store(
        self,
        messages: Sequence[MessageInput],
        created_by: str | None,
        *,
        idempotency_owner: str | None,
    ) -> tuple[list[Created], list[tuple[str, Priority]]]:
        """Store the messages; what was created, and the ``(id, priority)`` pairs to queue
        now (a scheduled one is published by the sweeper when its time comes)."""
        now = time.time()
        new = [
            self.new_delivery(message, created_by, idempotency_owner=idempotency_owner, now=now)
            for message in messages
        ]
        created = self._deliveries.create_many(new)
        repeated = [
            (c.id, m.priority) for c, m in zip(created, messages, strict=True) if not c.created
        ]
        # A repeated idempotency key whose delivery is still queued may never have reached
        # the broker (its producer died in between): queue it again; claims deduplicate.
        still_queued = [
            pair
            for pair, status in zip(
                repeated, self._deliveries.statuses([i for i, _ in repeated]), strict=True
            )
            if status is DeliveryStatus.QUEUED
        ]
        fresh = [
            (c.id, d.priority)
            for c, d in zip(created, new, strict=True)
            if c.created and d.send_at is None
        ]
        return created, fresh + still_queued

    def new_delivery(
        self,
        message: MessageInput,
        created_by: str | None,
        *,
        idempotency_owner: str | None,
        now: float,
    ) -> NewDelivery:
        """The record to store for ``message``, with its id and Message-ID."""
        delivery_id = uuid.uuid4().hex
        # Fixed here, reused by every attempt, so receivers can drop a duplicate.
        message_id = f"<{delivery_id}@{self._domain}>"
        return NewDelivery(
            delivery_id,
            message.to_outgoing(message_id),
            message.idempotency_key,
            message.priority,
            created_by,
            idempotency_owner,
            message.send_at_timestamp(now),
        )

    @property
    def confirms_replication(self) -> bool:
        """Whether an enqueue waits for Redis replicas (OUTBOX_REDIS_MIN_REPLICAS)."""
        return self._replicas is not None and self._replicas.min_replicas > 0

    def check_limits(self, message: MessageInput) -> None:
        """Refuse a message over OUTBOX_MAX_MESSAGE_BYTES (encoded bytes, not characters, of
        bodies, headers and attachments) or naming more addresses than OUTBOX_MAX_RECIPIENTS
        (to, cc, bcc and reply_to together)."""
        sizes = message.sizes()
        size = sum(sizes.values())
        if size > self._max_message_bytes:
            raise MessageTooLargeError(
                f"the message is about {size} bytes, over the limit of "
                f"{self._max_message_bytes} (OUTBOX_MAX_MESSAGE_BYTES)",
                field=max(sizes, key=sizes.__getitem__),
            )
        addresses = message.addresses()
        if addresses > self._max_recipients:
            raise TooManyRecipientsError(
                f"{addresses} addresses (to, cc, bcc and reply_to together), over the limit "
                f"of {self._max_recipients} (OUTBOX_MAX_RECIPIENTS)",
                # Name reply_to when the recipients alone would have been within the limit.
                field="to" if message.recipient_count() > self._max_recipients else "reply_to",
            )

    def retry(self, delivery_ids: Iterable[str]) -> list[DeliveryRecord]:
        """Queue failed deliveries again; raises for an unknown or unretryable id, after
        queueing every one reset before it (a reset record must never wait unqueued)."""
        self._require_replicas()
        records: list[DeliveryRecord] = []
        try:
            for delivery_id in delivery_ids:
                records.append(self._deliveries.reset_for_retry(delivery_id))
        finally:
            self._queue([(r.id, r.priority) for r in records])
        self._confirm_replicated()
        return records

    def retry_all_failed(self) -> list[DeliveryRecord]:
        self._require_replicas()
        records = []
        for delivery_id in self._deliveries.ids_with_status(DeliveryStatus.FAILED):
            try:
                records.append(self._deliveries.reset_for_retry(delivery_id))
            except DeliveryNotFoundError:
                # Expired with its retention; only its id was left in the index.
                self._deliveries.forget_ids([delivery_id])
            except NotRetryableError:
                continue  # changed meanwhile, e.g. retried by someone else
        self._queue([(r.id, r.priority) for r in records])
        self._confirm_replicated()
        return records

    def cancel(self, delivery_ids: Iterable[str]) -> list[CancelOutcome]:
        """Cancel each delivery that nothing is sending; what happened to each, in order.
        An unknown id raises, after the ones before it were cancelled."""
        self._require_replicas()
        try:
            return [self._deliveries.cancel(delivery_id) for delivery_id in delivery_ids]
        finally:
            self._confirm_replicated()

    def cancel_by_idempotency_prefix(
        self, prefix: str, *, owner: str | None
    ) -> list[CancelOutcome]:
        """Cancel every delivery whose idempotency key starts with ``prefix`` (a producer
        withdrawing a whole run), among ``owner``'s keys, the shared ones (None) or every
        one (``ALL_OWNERS``); those already gone (expired) are left out."""
        if not prefix:
            raise InvalidInputError("must not be empty", field="idempotency_prefix")
        self._require_replicas()
        outcomes = []
        try:
            for delivery_id in self._deliveries.ids_by_idempotency_prefix(prefix, owner=owner):
                with contextlib.suppress(DeliveryNotFoundError):
                    outcomes.append(self._deliveries.cancel(delivery_id))
        finally:
            self._confirm_replicated()
        return outcomes

    def _require_replicas(self) -> None:
        """Refuse before storing anything while fewer replicas than the minimum are in sync."""
        if self._replicas is not None:
            self._replicas.require()

    def _confirm_replicated(self) -> None:
        """Answer only once enough replicas hold the records and their tasks: a failover
        now promotes a replica that has them."""
        if self._replicas is not None:
            self._replicas.confirm()

    def _queue(self, deliveries: list[tuple[str, Priority]]) -> None:
        """Publish ``(id, priority)`` pairs, the high ones first."""
        published: set[str] = set()
        try:
            for priority in Priority:  # declared high, normal, low
                ids = [delivery_id for delivery_id, p in deliveries if p is priority]
                if ids:
                    self._publish(chunked(ids), priority=priority)
                    published.update(ids)
        except Exception as exc:
            # Stored but never queued would be lost silently: record it as failed instead.
            reason = f"could not be queued: {type(exc).__name__}; retry it with `outbox retry`"
            for delivery_id, _ in deliveries:
                if delivery_id not in published:
                    self._deliveries.mark_unqueued(delivery_id, reason)
            raise


class TaskBuilder(Protocol):
    """Builds the broker's message of a send task for delivery ids, in their priority's queue."""

    def for_ids(self, delivery_ids: Sequence[str], priority: Priority) -> QueuedTask: ...


class AsyncEnqueue:
    """One message stored and queued in one round trip, on an asynchronous client: the HTTP
    API's enqueue (``Producer.enqueue`` does the same in two steps, through Celery).

    Without replicas to wait for only (``Producer.confirms_replication``): the caller uses
    ``Producer`` otherwise."""

    def __init__(self, producer: Producer, enqueuer: AsyncEnqueuer, tasks: TaskBuilder) -> None:
        self._producer = producer
        self._enqueuer = enqueuer
        self._tasks = tasks

    async def enqueue(
        self,
        message: MessageInput,
        *,
        created_by: str | None,
        guard: Guard | None = None,
        touch: Touch | None = None,
    ) -> Enqueued | None:
        """Store and queue ``message`` (its idempotency key ``created_by``'s own); None when
        the guard refused and nothing was written."""
        self._producer.check_limits(message)
        delivery = self._producer.new_delivery(
            message, created_by, idempotency_owner=created_by, now=time.time()
        )
        scheduled = delivery.send_at is not None
        task = None if scheduled else self._tasks.for_ids([delivery.id], delivery.priority)
        enqueued = await self._enqueuer.enqueue(delivery, task=task, guard=guard, touch=touch)
        if enqueued is not None and enqueued.status is DeliveryStatus.QUEUED:
            # As Producer._store: a repeated key's delivery still queued is queued again.
            await self._enqueuer.push(self._tasks.for_ids([enqueued.created.id], message.priority))
        return enqueued
