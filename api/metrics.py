"""Prometheus metrics read from Redis at scrape time: nothing is counted in the API process."""

from __future__ import annotations

import time
from collections.abc import Iterator

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tasks.queues import QUEUES
from worker.records import (
    ATTEMPT_COUNTERS,
    PAUSE_KEY,
    AttemptOutcome,
    DeliveryStatus,
    status_index_key,
)
from worker.sending_limits import WAIT_COUNTERS, WaitReason

__all__ = ["OutboxCollector"]


class OutboxCollector(Collector):
    """Deliveries by status, attempts by outcome, the broker queue, the oldest queued age,
    waits and pauses by reason, and whether the sending account is paused."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def collect(self) -> Iterator[Metric]:
        statuses = list(DeliveryStatus)
        pipe = self._redis.pipeline(transaction=False)
        for status in statuses:
            pipe.zcard(status_index_key(status))
        pipe.zrange(status_index_key(DeliveryStatus.QUEUED), 0, 0, withscores=True)
        pipe.hgetall(ATTEMPT_COUNTERS)
        pipe.hgetall(WAIT_COUNTERS)
        pipe.hget(PAUSE_KEY, "until")
        for name in QUEUES.values():
            pipe.llen(name)
        replies = pipe.execute()
        counts = replies[: len(statuses)]
        oldest, attempts, waits, paused_until, *queue_lengths = replies[len(statuses) :]

        deliveries = GaugeMetricFamily(
            "outbox_deliveries", "Deliveries known, by status.", labels=["status"]
        )
        for status, count in zip(statuses, counts, strict=True):
            deliveries.add_metric([status.value], count)
        yield deliveries

        by_outcome = CounterMetricFamily(
            "outbox_attempts", "Delivery attempts recorded, by outcome.", labels=["outcome"]
        )
        for outcome in AttemptOutcome:
            by_outcome.add_metric([outcome.value], int(attempts.get(outcome.value.encode(), 0)))
        yield by_outcome

        by_reason = CounterMetricFamily(
            "outbox_waits",
            "E-mails that waited for the sending limits, and pauses of the sending account "
            "after a provider's quota reply, by reason.",
            labels=["reason"],
        )
        for reason in WaitReason:
            by_reason.add_metric([reason.value], int(waits.get(reason.value.encode(), 0)))
        yield by_reason
        yield GaugeMetricFamily(
            "outbox_account_paused_seconds",
            "Seconds the sending account stays paused after a provider's quota reply (0: not).",
            value=max(float(paused_until or 0) - time.time(), 0.0),
        )

        waiting = GaugeMetricFamily(
            "outbox_queue_tasks",
            "Tasks waiting in the broker queues (each carries up to 50 delivery ids).",
            labels=["priority"],
        )
        for priority, length in zip(QUEUES, queue_lengths, strict=True):
            waiting.add_metric([priority.value], length)
        yield waiting
        age = time.time() - oldest[0][1] if oldest else 0.0
        yield GaugeMetricFamily(
            "outbox_oldest_queued_seconds",
            "Age of the oldest delivery still queued (0 when none is).",
            value=max(age, 0.0),
        )
