"""The safety net: deliveries whose job was lost are found and sent, never left stuck."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from config.mail_settings import SmtpSettings, TlsMode
from tasks.context import OutboxContext
from tasks.message_input import MessageInput
from tasks.producer import Producer
from tests.support.in_process_worker import InProcessWorker
from worker.records import DeliveryStatus, record_key, status_index_key
from worker.testing.smtp_peer import SmtpPeer, smtp_peer


@pytest.fixture
def peer(context: OutboxContext) -> Iterator[SmtpPeer]:
    with smtp_peer() as running:
        context.settings_store.save(
            SmtpSettings(
                server=running.host,
                port=running.port,
                from_mailbox="r@example.com",
                tls=TlsMode.NONE,
            )
        )
        yield running


def strand(redis_client: redis.Redis, delivery_id: str, status: DeliveryStatus, age: float) -> None:
    """Leave a delivery as a lost job would: in ``status`` since ``age`` seconds, no task."""
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


def test_expired_claims_and_overdue_retries_are_sent(
    context: OutboxContext,
    producer: Producer,
    worker: InProcessWorker,
    peer: SmtpPeer,
    redis_client: redis.Redis,
) -> None:
    def new() -> str:
        return producer.enqueue(MessageInput(to=["a@example.com"], subject="s", text="x")).id

    claimed_by_lost_worker, lost_retry, fresh_claim = new(), new(), new()
    strand(redis_client, claimed_by_lost_worker, DeliveryStatus.SENDING, age=3600)
    strand(redis_client, lost_retry, DeliveryStatus.RETRYING, age=4 * 3600)
    strand(redis_client, fresh_claim, DeliveryStatus.SENDING, age=5)  # a live job: left alone

    swept = worker.runtime.sweep_now()
    assert sorted(swept) == sorted([claimed_by_lost_worker, lost_retry])
    assert worker.runtime.sweep_now() == []  # one sweep per interval across processes
    for delivery_id in swept:
        assert worker.settle(delivery_id) == "sent"
    record = context.deliveries.get(claimed_by_lost_worker)
    assert [a.outcome for a in record.attempts] == ["lost", "sent"]
    assert len(peer.wait_for_messages(2)) == 2
