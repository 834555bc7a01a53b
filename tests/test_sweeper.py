"""The safety net: deliveries whose job was lost are found and sent, never left stuck."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from config.mail_settings import SmtpSettings, TlsMode
from peers.smtp_peer import SmtpPeer, smtp_peer
from tasks.context import OutboxContext
from tasks.message_input import MessageInput
from tasks.producer import Producer
from tests.support.in_process_worker import CollectingQueue, InProcessWorker
from worker.records import DUE_KEY, DeliveryStatus, Priority, record_key, status_index_key
from worker.records.codec import as_text
from worker.records.scripts import SWEEP, sweep_call
from worker.records.sweeps import SweepStore
from worker.runtime import worker_redis
from worker.sweeper import Sweeper


@pytest.fixture
def peer(outbox_context: OutboxContext) -> Iterator[SmtpPeer]:
    with smtp_peer() as running:
        outbox_context.settings_store.save(
            SmtpSettings(
                server=running.host,
                port=running.port,
                from_mailbox="r@example.com",
                tls=TlsMode.NONE,
            )
        )
        yield running


def strand(redis_client: redis.Redis, delivery_id: str, status: DeliveryStatus, age: float) -> None:
    """Leave a delivery as a lost job would: in ``status`` since ``age`` seconds, no task, due."""
    then = time.time() - age
    redis_client.hset(
        record_key(delivery_id),
        mapping={
            "status": status.value,
            "attempt_count": 1,
            "lease_until": then,
            "updated_at": then,
            "next_attempt_at": then,
        },
    )
    redis_client.zrem(status_index_key(DeliveryStatus.QUEUED), delivery_id)
    redis_client.zadd(status_index_key(status), {delivery_id: then})
    redis_client.zadd(DUE_KEY, {delivery_id: then})


def enqueue(producer: Producer) -> str:
    return producer.enqueue(MessageInput(to=["a@example.com"], subject="s", text="x")).id


def test_lapsed_claims_and_due_retries_are_published_and_sent(
    outbox_context: OutboxContext,
    producer: Producer,
    worker: InProcessWorker,
    peer: SmtpPeer,
    redis_client: redis.Redis,
) -> None:
    claimed_by_lost_worker, due_retry, live_claim = (
        enqueue(producer),
        enqueue(producer),
        enqueue(producer),
    )
    strand(redis_client, claimed_by_lost_worker, DeliveryStatus.SENDING, age=40)
    strand(redis_client, due_retry, DeliveryStatus.RETRYING, age=1)
    strand(redis_client, live_claim, DeliveryStatus.SENDING, age=5)
    redis_client.hset(record_key(live_claim), "lease_until", time.time() + 30)  # a live job

    for delivery_id in (claimed_by_lost_worker, due_retry):
        assert worker.settle(delivery_id) == "sent"
    assert not worker.queue.take(live_claim)
    record = outbox_context.deliveries.get(claimed_by_lost_worker)
    assert [a.outcome for a in record.attempts] == ["lost", "sent"]
    assert len(peer.wait_for_messages(2)) == 2


def test_a_queued_delivery_whose_task_was_lost_is_published_once_it_cannot_be_waiting(
    outbox_context: OutboxContext,
    producer: Producer,
    worker: InProcessWorker,
    peer: SmtpPeer,
    redis_client: redis.Redis,
) -> None:
    # A producer died after storing the record and before publishing its task.
    orphan = enqueue(producer)
    published_long_ago = time.time() - 120
    redis_client.zadd(status_index_key(DeliveryStatus.QUEUED), {orphan: published_long_ago})
    fresh = enqueue(producer)  # its task may still be waiting: left alone

    assert worker.settle(orphan) == "sent"
    time.sleep(0.3)  # a few more sweeps
    assert not worker.queue.take(fresh)
    assert queued_ids(redis_client) == [fresh]


def test_a_high_priority_retry_is_published_into_the_high_queue(
    outbox_context: OutboxContext,
    producer: Producer,
    worker: InProcessWorker,
    peer: SmtpPeer,
    redis_client: redis.Redis,
) -> None:
    urgent = producer.enqueue(
        MessageInput(to=["a@example.com"], subject="s", priority=Priority.HIGH)
    ).id
    usual = enqueue(producer)
    for delivery_id in (urgent, usual):
        strand(redis_client, delivery_id, DeliveryStatus.RETRYING, age=5)
    deadline = time.monotonic() + 5
    while len(worker.queue.priorities) < 2:  # the sweeper publishes both due retries
        assert time.monotonic() < deadline, worker.queue.priorities
        time.sleep(0.05)
    assert worker.queue.priorities == {urgent: Priority.HIGH, usual: Priority.NORMAL}


def test_final_ids_leave_the_indexes_after_the_retention(
    outbox_context: OutboxContext, worker: InProcessWorker, redis_client: redis.Redis
) -> None:
    old = time.time() - outbox_context.settings.retention_seconds - 3600
    redis_client.zadd(status_index_key(DeliveryStatus.SENT), {"expired-long-ago": old})
    redis_client.zadd(status_index_key(DeliveryStatus.SENT), {"recent": time.time()})
    deadline = time.monotonic() + 5
    while redis_client.zscore(status_index_key(DeliveryStatus.SENT), "expired-long-ago"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert redis_client.zscore(status_index_key(DeliveryStatus.SENT), "recent") is not None


def queued_ids(redis_client: redis.Redis) -> list[str]:
    return [
        as_text(raw) for raw in redis_client.zrange(status_index_key(DeliveryStatus.QUEUED), 0, -1)
    ]


def sweep_once(outbox_context: OutboxContext, clock: Callable[[], float]) -> list[str]:
    """What one sweep by a process whose clock is ``clock`` publishes."""

    async def sweep() -> list[str]:
        client = worker_redis(outbox_context.redis_location)
        try:
            sweeper = Sweeper(
                SweepStore(client),
                CollectingQueue(),
                interval_seconds=1,
                stranded_after_seconds=30,
                retention_seconds=outbox_context.settings.retention_seconds,
                clock=clock,
            )
            return await sweeper.sweep()
        finally:
            await client.aclose()

    return asyncio.run(sweep())


def test_a_sweeper_whose_clock_runs_an_hour_ahead_publishes_no_live_claim(
    outbox_context: OutboxContext, producer: Producer, redis_client: redis.Redis
) -> None:
    live_claim = enqueue(producer)
    strand(redis_client, live_claim, DeliveryStatus.SENDING, age=5)
    lease_until = time.time() + 30
    redis_client.hset(record_key(live_claim), "lease_until", lease_until)
    redis_client.zadd(DUE_KEY, {live_claim: lease_until})

    assert sweep_once(outbox_context, lambda: time.time() + 3600) == []
    assert redis_client.hget(record_key(live_claim), "status") == b"sending"


def test_a_sweeper_whose_clock_runs_an_hour_behind_still_publishes_what_is_due(
    outbox_context: OutboxContext, producer: Producer, redis_client: redis.Redis
) -> None:
    lapsed_claim, due_retry = enqueue(producer), enqueue(producer)
    strand(redis_client, lapsed_claim, DeliveryStatus.SENDING, age=40)
    strand(redis_client, due_retry, DeliveryStatus.RETRYING, age=1)

    published = sweep_once(outbox_context, lambda: time.time() - 3600)
    assert sorted(published) == sorted([lapsed_claim, due_retry])


def test_a_sweep_made_again_after_its_reply_was_lost_publishes_the_same(
    producer: Producer, redis_client: redis.Redis
) -> None:
    due_retry = enqueue(producer)
    strand(redis_client, due_retry, DeliveryStatus.RETRYING, age=1)
    call = sweep_call(
        due_retry,
        published_at=time.time(),
        published_before=time.time() - 10,
        look_again_after=30,
    )
    sweep = redis_client.register_script(SWEEP)
    first, again = (sweep(keys=call.keys, args=call.args) for _ in range(2))
    # Not "waiting" the second time: the delivery it queued is its own to publish.
    assert (first, again) == (b"publish", b"publish")
    assert redis_client.hget(record_key(due_retry), "status") == b"queued"
