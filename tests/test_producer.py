"""The producer API and record store: idempotency, chunked publishing, retry, listing, purge."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import cast
from unittest.mock import ANY

import pytest
import redis

from config.errors import (
    DeliveryNotFoundError,
    MessageTooLargeError,
    NotRetryableError,
    TooManyRecipientsError,
)
from tasks.celery_app import PUBLISHED_AT_HEADER, TaskMessages, celery_publisher, create_celery_app
from tasks.context import OutboxContext
from tasks.message_input import MessageInput
from tasks.producer import CHUNK_SIZE, AsyncEnqueue, Producer
from tasks.queues import QUEUES
from tests.conftest import CollectingPublisher
from worker.records import DeliveryStatus, Priority, record_key, status_index_key
from worker.records.enqueue import AsyncEnqueuer, Guard, Touch


def message(**fields: object) -> MessageInput:
    return MessageInput.model_validate({"to": ["a@example.com"], "subject": "s", **fields})


def test_enqueue_stores_a_queued_record_and_publishes_only_its_id(
    outbox_context: OutboxContext, producer: Producer, publisher: CollectingPublisher
) -> None:
    created = producer.enqueue(message(text="secret body"))
    assert created.created
    assert publisher.chunks == [[created.id]]
    record = outbox_context.deliveries.get(created.id)
    assert record.status is DeliveryStatus.QUEUED
    assert record.message.message_id == f"<{created.id}@outbox.test>"
    assert [r.address for r in record.recipients] == ["a@example.com"]


def test_same_idempotency_key_same_delivery(
    producer: Producer, publisher: CollectingPublisher, redis_client: redis.Redis
) -> None:
    first = producer.enqueue(message(idempotency_key="run-42"))
    second = producer.enqueue(message(idempotency_key="run-42", subject="changed"))
    assert (second.id, second.created) == (first.id, False)
    # Still queued: perhaps never published (a producer that died in between), so again.
    assert publisher.chunks == [[first.id], [first.id]]
    redis_client.hset(record_key(first.id), "status", "sent")
    assert producer.enqueue(message(idempotency_key="run-42")).id == first.id
    assert publisher.chunks == [[first.id], [first.id]]  # sent: nothing to queue


def test_bulk_enqueue_publishes_chunks_of_ids(
    producer: Producer, publisher: CollectingPublisher
) -> None:
    created = producer.enqueue_many([message(subject=f"n{n}") for n in range(120)])
    assert len({c.id for c in created}) == 120
    assert [len(chunk) for chunk in publisher.chunks] == [CHUNK_SIZE, CHUNK_SIZE, 20]
    assert [i for chunk in publisher.chunks for i in chunk] == [c.id for c in created]


def test_each_priority_goes_to_its_own_queue_high_first(
    outbox_context: OutboxContext, producer: Producer, publisher: CollectingPublisher
) -> None:
    normal, low, high = producer.enqueue_many(
        [message(), message(priority="low"), message(priority="high")]
    )
    assert publisher.chunks == [[high.id], [normal.id], [low.id]]
    assert publisher.priorities == [Priority.HIGH, Priority.NORMAL, Priority.LOW]
    assert outbox_context.deliveries.get(high.id).priority is Priority.HIGH
    assert outbox_context.deliveries.get(normal.id).priority is Priority.NORMAL


def test_too_large_is_refused_before_anything_is_stored(
    outbox_context: OutboxContext, publisher: CollectingPublisher, redis_client: redis.Redis
) -> None:
    small = Producer(
        outbox_context.deliveries, publisher, message_id_domain="outbox.test", max_message_bytes=100
    )
    attachment = {"name": "big.bin", "content": b"x" * 1000}
    with pytest.raises(MessageTooLargeError, match="attachments"):
        small.enqueue(message(attachments=[attachment]))
    assert redis_client.zcard(status_index_key(DeliveryStatus.QUEUED)) == 0


def test_a_broker_failure_leaves_a_failed_record_not_a_lost_one(
    outbox_context: OutboxContext,
) -> None:
    def broken(chunks: object, *, priority: object) -> None:
        raise ConnectionError("broker down")

    producer = Producer(
        outbox_context.deliveries, broken, message_id_domain="outbox.test", max_message_bytes=10**6
    )
    with pytest.raises(ConnectionError):
        producer.enqueue(message())
    [record] = outbox_context.deliveries.recent(DeliveryStatus.FAILED)
    assert "could not be queued" in (record.last_error or "")


def test_a_bulk_enqueue_queues_each_chunk_as_soon_as_it_is_stored(
    outbox_context: OutboxContext, redis_client: redis.Redis
) -> None:
    # Workers start on the first e-mails while the rest are still being stored.
    stored_at_publish: list[int] = []

    def publish(chunks: object, *, priority: object) -> None:
        stored_at_publish.append(int(redis_client.zcard(status_index_key(DeliveryStatus.QUEUED))))

    producer = Producer(
        outbox_context.deliveries, publish, message_id_domain="outbox.test", max_message_bytes=10**6
    )
    producer.enqueue_many([message(subject=f"n{n}") for n in range(120)])
    assert stored_at_publish == [CHUNK_SIZE, 2 * CHUNK_SIZE, 120]


def test_a_broker_failing_mid_batch_stops_the_batch_with_that_chunk_failed_not_lost(
    outbox_context: OutboxContext, redis_client: redis.Redis
) -> None:
    published: list[str] = []

    def fails_on_the_second_chunk(chunks: Sequence[Sequence[str]], *, priority: object) -> None:
        if published:
            raise ConnectionError("broker down")
        published.extend(chunks[0])

    producer = Producer(
        outbox_context.deliveries,
        fails_on_the_second_chunk,
        message_id_domain="outbox.test",
        max_message_bytes=10**6,
    )
    with pytest.raises(ConnectionError):
        producer.enqueue_many([message(subject=f"n{n}") for n in range(120)])
    assert len(published) == CHUNK_SIZE
    failed = outbox_context.deliveries.recent(DeliveryStatus.FAILED, limit=200)
    assert len(failed) == CHUNK_SIZE  # the second chunk: stored, then marked
    assert not {r.id for r in failed} & set(published)
    assert all("could not be queued: ConnectionError" in (r.last_error or "") for r in failed)
    # The third chunk was never stored: nothing is left queued without a task.
    assert redis_client.zcard(status_index_key(DeliveryStatus.QUEUED)) == CHUNK_SIZE


def test_retry_requeues_failed_deliveries_only(
    outbox_context: OutboxContext,
    producer: Producer,
    publisher: CollectingPublisher,
    redis_client: redis.Redis,
) -> None:
    created = producer.enqueue(message())
    with pytest.raises(NotRetryableError, match="queued"):
        producer.retry([created.id])
    with pytest.raises(DeliveryNotFoundError):
        producer.retry(["nope"])
    redis_client.hset(record_key(created.id), "status", "failed")
    redis_client.zadd(status_index_key(DeliveryStatus.FAILED), {created.id: time.time()})
    [record] = producer.retry_all_failed()
    assert record.id == created.id
    assert outbox_context.deliveries.get(created.id).status is DeliveryStatus.QUEUED
    assert outbox_context.deliveries.ids_with_status(DeliveryStatus.FAILED) == []
    assert publisher.chunks[-1] == [created.id]


def test_retry_all_failed_skips_expired_records_and_queues_the_rest(
    outbox_context: OutboxContext,
    producer: Producer,
    publisher: CollectingPublisher,
    redis_client: redis.Redis,
) -> None:
    expired, kept = producer.enqueue(message()).id, producer.enqueue(message()).id
    for delivery_id in (expired, kept):
        redis_client.hset(record_key(delivery_id), "status", "failed")
        redis_client.zrem(status_index_key(DeliveryStatus.QUEUED), delivery_id)
        redis_client.zadd(status_index_key(DeliveryStatus.FAILED), {delivery_id: time.time()})
    redis_client.delete(record_key(expired))  # its retention ran out; the index lags
    assert [r.id for r in producer.retry_all_failed()] == [kept]
    assert publisher.chunks[-1] == [kept]
    assert outbox_context.deliveries.ids_with_status(DeliveryStatus.FAILED) == []


def test_retry_queues_what_it_reset_before_an_unknown_id(
    outbox_context: OutboxContext,
    producer: Producer,
    publisher: CollectingPublisher,
    redis_client: redis.Redis,
) -> None:
    delivery_id = producer.enqueue(message()).id
    redis_client.hset(record_key(delivery_id), "status", "failed")
    with pytest.raises(DeliveryNotFoundError):
        producer.retry([delivery_id, "no-such-id"])
    assert outbox_context.deliveries.get(delivery_id).status is DeliveryStatus.QUEUED
    assert publisher.chunks[-1] == [delivery_id]


def test_recent_lists_newest_first_and_by_status(
    outbox_context: OutboxContext, producer: Producer
) -> None:
    ids = [producer.enqueue(message(subject=f"n{n}")).id for n in range(3)]
    assert [r.id for r in outbox_context.deliveries.recent(limit=2)] == ids[:0:-1]
    assert outbox_context.deliveries.recent(DeliveryStatus.SENT) == []


def test_purge_removes_old_final_records(
    outbox_context: OutboxContext, producer: Producer, redis_client: redis.Redis
) -> None:
    old = producer.enqueue(message(idempotency_key="old")).id
    fresh = producer.enqueue(message()).id
    long_ago = time.time() - 10 * 86400
    redis_client.hset(record_key(old), mapping={"status": "sent", "updated_at": long_ago})
    redis_client.zrem(status_index_key(DeliveryStatus.QUEUED), old)
    redis_client.zadd(status_index_key(DeliveryStatus.SENT), {old: long_ago})
    assert outbox_context.deliveries.purge(7 * 86400) == 1
    with pytest.raises(DeliveryNotFoundError):
        outbox_context.deliveries.get(old)
    assert outbox_context.deliveries.get(fresh).status is DeliveryStatus.QUEUED
    assert redis_client.exists("outbox:idempotency:old") == 0


def test_purge_keeps_a_record_retried_after_it_was_listed(
    outbox_context: OutboxContext, producer: Producer, redis_client: redis.Redis
) -> None:
    delivery_id = producer.enqueue(message()).id
    long_ago = time.time() - 10 * 86400
    # As if purge listed it while it was an old `sent` record, and a retry requeued it since.
    redis_client.zadd(status_index_key(DeliveryStatus.SENT), {delivery_id: long_ago})
    assert outbox_context.deliveries.purge(7 * 86400) == 0
    assert outbox_context.deliveries.get(delivery_id).status is DeliveryStatus.QUEUED


def test_a_non_ascii_body_counts_its_bytes_against_the_limit(
    outbox_context: OutboxContext, publisher: CollectingPublisher
) -> None:
    small = Producer(
        outbox_context.deliveries,
        publisher,
        message_id_domain="outbox.test",
        max_message_bytes=100_000,
    )
    with pytest.raises(MessageTooLargeError, match="120001 bytes") as refused:  # text + subject
        small.enqueue(MessageInput(to=["a@example.com"], subject="s", text="é" * 60_000))
    assert refused.value.field == "text"
    assert publisher.chunks == []


def test_recipients_are_limited_per_message(
    outbox_context: OutboxContext, publisher: CollectingPublisher
) -> None:
    producer = Producer(
        outbox_context.deliveries,
        publisher,
        message_id_domain="outbox.test",
        max_message_bytes=10**6,
        max_recipients=3,
    )
    to = [f"r{i}@example.com" for i in range(3)]
    producer.enqueue(MessageInput(to=to, cc=[to[0]], subject="s"))  # 3 distinct: accepted
    with pytest.raises(TooManyRecipientsError, match="4 addresses") as refused:
        producer.enqueue(MessageInput(to=to, bcc=["r3@example.com"], subject="s"))
    assert refused.value.field == "to"
    with pytest.raises(TooManyRecipientsError, match="5 addresses") as refused:
        producer.enqueue(
            MessageInput(to=to, reply_to=["x@example.com", "y@example.com"], subject="s")
        )
    assert refused.value.field == "reply_to"
    assert len(publisher.chunks) == 1


def test_headers_and_reply_to_count_toward_the_size_limit(
    outbox_context: OutboxContext, publisher: CollectingPublisher
) -> None:
    small = Producer(
        outbox_context.deliveries,
        publisher,
        message_id_domain="outbox.test",
        max_message_bytes=10_000,
    )
    padded = {"X-Pad": "p" * 20_000}
    with pytest.raises(MessageTooLargeError, match="over the limit of 10000") as refused:
        small.enqueue(MessageInput(to=["a@example.com"], subject="s", headers=padded))
    assert refused.value.field == "headers"
    long_reply_to = [f"{'r' * 60}{n}@example.com" for n in range(200)]
    with pytest.raises(MessageTooLargeError) as refused:
        small.enqueue(MessageInput(to=["a@example.com"], subject="s", reply_to=long_reply_to))
    assert refused.value.field == "reply_to"
    assert publisher.chunks == []


# --- The HTTP API's enqueue: record and task in one script -----------------------------------

_PER_MESSAGE = {"id", "root_id", "correlation_id", "delivery_tag", "uuid", "timestamp", "clock"}


def _comparable(raw: bytes | str) -> dict[str, object]:
    """A broker message with its body decoded and what differs per message blanked."""

    def blank(value: object) -> object:
        if isinstance(value, dict):
            return {
                key: "*" if key in _PER_MESSAGE or key == PUBLISHED_AT_HEADER else blank(item)
                for key, item in value.items()
            }
        return value

    message = json.loads(raw)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    return {"as_sent": list(json.loads(raw)), **cast(dict[str, object], blank(message))}


def test_task_messages_are_what_celery_itself_publishes(
    outbox_context: OutboxContext, redis_client: redis.Redis
) -> None:
    app = create_celery_app(outbox_context)
    ids = ["0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"]
    events = redis_client.pubsub()
    events.psubscribe("*celeryev*")
    events.get_message(timeout=1)  # the subscription's confirmation
    celery_publisher(app)([ids], priority=Priority.HIGH)
    by_celery = redis_client.rpop(QUEUES[Priority.HIGH])
    celery_event = events.get_message(timeout=2)
    built = TaskMessages(app).for_ids(ids, Priority.HIGH)
    assert isinstance(by_celery, bytes)
    assert celery_event is not None
    assert built.queue == QUEUES[Priority.HIGH]
    assert _comparable(built.message) == _comparable(by_celery)
    assert built.event_channel == celery_event["channel"].decode()
    assert _comparable(built.event) == _comparable(celery_event["data"])
    events.close()


Scenario = Callable[[AsyncEnqueue], Awaitable[None]]


def on_one_loop(outbox_context: OutboxContext, producer: Producer, scenario: Scenario) -> None:
    """``scenario`` with an ``AsyncEnqueue`` whose client lives on the loop it runs on."""

    async def run() -> None:
        client = outbox_context.redis_location.async_producer_client()
        enqueuer = AsyncEnqueuer(
            client, retention_seconds=outbox_context.settings.retention_seconds
        )
        tasks = TaskMessages(create_celery_app(outbox_context))
        try:
            await scenario(AsyncEnqueue(producer, enqueuer, tasks))
        finally:
            await client.aclose()

    asyncio.run(run())


def test_one_enqueue_stores_the_record_with_its_task_in_the_broker(
    outbox_context: OutboxContext, producer: Producer, redis_client: redis.Redis
) -> None:
    async def scenario(enqueue: AsyncEnqueue) -> None:
        enqueued = await enqueue.enqueue(message(text="secret body"), created_by="ci")
        assert enqueued is not None
        assert enqueued.created.created
        assert enqueued.status is None
        record = outbox_context.deliveries.get(enqueued.created.id)
        assert (record.status, record.created_by) == (DeliveryStatus.QUEUED, "ci")
        [task] = redis_client.lrange(QUEUES[Priority.NORMAL], 0, -1)
        assert _comparable(task)["body"] == [[[enqueued.created.id]], {}, ANY]
        assert b"secret body" not in task  # the broker carries ids only

        scheduled = message(send_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat())
        later = await enqueue.enqueue(scheduled, created_by="ci")
        assert later is not None
        assert outbox_context.deliveries.get(later.created.id).status is DeliveryStatus.SCHEDULED
        assert redis_client.llen(QUEUES[Priority.NORMAL]) == 1  # the sweeper publishes it

    on_one_loop(outbox_context, producer, scenario)


def test_one_enqueue_gives_back_a_repeated_key_and_queues_it_again_while_queued(
    outbox_context: OutboxContext, producer: Producer, redis_client: redis.Redis
) -> None:
    async def scenario(enqueue: AsyncEnqueue) -> None:
        first = await enqueue.enqueue(message(idempotency_key="run-7"), created_by="ci")
        again = await enqueue.enqueue(message(idempotency_key="run-7"), created_by="ci")
        assert first is not None
        assert again is not None
        assert (again.created.id, again.created.created) == (first.created.id, False)
        assert again.status is DeliveryStatus.QUEUED
        assert redis_client.llen(QUEUES[Priority.NORMAL]) == 2  # perhaps never published
        redis_client.hset(record_key(first.created.id), "status", "sent")
        sent = await enqueue.enqueue(message(idempotency_key="run-7"), created_by="ci")
        assert sent is not None
        assert sent.status is DeliveryStatus.SENT
        assert redis_client.llen(QUEUES[Priority.NORMAL]) == 2

    on_one_loop(outbox_context, producer, scenario)


def test_one_enqueue_writes_nothing_once_its_guard_changed(
    outbox_context: OutboxContext, producer: Producer, redis_client: redis.Redis
) -> None:
    async def scenario(enqueue: AsyncEnqueue) -> None:
        redis_client.set("guard", "as read")
        guard = Guard("guard", b"as read")
        touch = Touch("touched", "ci", "now")
        assert await enqueue.enqueue(message(), created_by="ci", guard=guard, touch=touch)
        assert redis_client.hget("touched", "ci") == b"now"
        redis_client.set("guard", "changed")
        before = redis_client.zcard(status_index_key(DeliveryStatus.QUEUED))
        assert await enqueue.enqueue(message(), created_by="ci", guard=guard) is None
        assert redis_client.zcard(status_index_key(DeliveryStatus.QUEUED)) == before
        assert redis_client.llen(QUEUES[Priority.NORMAL]) == 1

    on_one_loop(outbox_context, producer, scenario)
