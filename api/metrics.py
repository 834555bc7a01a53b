"""Prometheus metrics read from Redis at scrape time: nothing is counted in the API process."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from config.mail_settings import DeliveryMode
from config.settings_store import SETTINGS_KEY
from tasks.queues import QUEUES
from worker.records import (
    ATTEMPT_COUNTERS,
    PAUSE_KEY,
    AttemptOutcome,
    DeliveryStatus,
    status_index_key,
)
from worker.sending_limits import WAIT_COUNTERS, WaitReason

__all__ = ["OutboxCollector", "saved_delivery_mode"]


def _delivery_mode_of(document: bytes | None) -> DeliveryMode:
    """The delivery mode of a stored settings document (none saved: deliver)."""
    if document is None:
        return DeliveryMode.DELIVER
    return DeliveryMode(json.loads(document).get("delivery_mode", DeliveryMode.DELIVER.value))


def saved_delivery_mode(client: redis.Redis) -> str:
    """The saved settings' delivery mode, read without decrypting anything."""
    document: bytes | None = client.hget(SETTINGS_KEY, "document")  # type: ignore[assignment]
    return _delivery_mode_of(document).value


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """What one scrape reads from Redis, in one round trip."""

    counts: list[int]  # deliveries per status, in DeliveryStatus's order
    oldest_queued: list[tuple[bytes, float]]  # the oldest queued id and its score, if any
    attempts: dict[bytes, bytes]  # outcome -> count
    waits: dict[bytes, bytes]  # reason -> count
    paused_until: bytes | None
    settings: bytes | None  # the stored settings document
    queue_lengths: list[int]  # tasks per broker queue, in QUEUES's order


class OutboxCollector(Collector):
    """Deliveries by status, attempts by outcome, the broker queue, the oldest queued age,
    waits and pauses by reason, whether the sending account is paused, and the delivery
    mode."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def collect(self) -> Iterator[Metric]:
        snapshot = self._read()
        yield _deliveries(snapshot.counts)
        yield _by_member(
            CounterMetricFamily(
                "outbox_attempts", "Delivery attempts recorded, by outcome.", labels=["outcome"]
            ),
            AttemptOutcome,
            snapshot.attempts,
        )
        yield _by_member(
            CounterMetricFamily(
                "outbox_waits",
                "E-mails that waited for the sending limits, and pauses of the sending account "
                "after a provider's quota reply, by reason.",
                labels=["reason"],
            ),
            WaitReason,
            snapshot.waits,
        )
        yield GaugeMetricFamily(
            "outbox_account_paused_seconds",
            "Seconds the sending account stays paused after a provider's quota reply (0: not).",
            value=max(float(snapshot.paused_until or 0) - time.time(), 0.0),
        )
        yield _delivery_modes(_delivery_mode_of(snapshot.settings))
        yield _queue_tasks(snapshot.queue_lengths)
        oldest = snapshot.oldest_queued
        age = time.time() - oldest[0][1] if oldest else 0.0
        yield GaugeMetricFamily(
            "outbox_oldest_queued_seconds",
            "Age of the oldest delivery still queued (0 when none is).",
            value=max(age, 0.0),
        )

    def _read(self) -> _Snapshot:
        statuses = list(DeliveryStatus)
        pipe = self._redis.pipeline(transaction=False)
        for status in statuses:
            pipe.zcard(status_index_key(status))
        pipe.zrange(status_index_key(DeliveryStatus.QUEUED), 0, 0, withscores=True)
        pipe.hgetall(ATTEMPT_COUNTERS)
        pipe.hgetall(WAIT_COUNTERS)
        pipe.hget(PAUSE_KEY, "until")
        pipe.hget(SETTINGS_KEY, "document")
        for name in QUEUES.values():
            pipe.llen(name)
        replies = pipe.execute()
        oldest, attempts, waits, paused_until, settings, *queue_lengths = replies[len(statuses) :]
        return _Snapshot(
            replies[: len(statuses)], oldest, attempts, waits, paused_until, settings, queue_lengths
        )


def _deliveries(counts: list[int]) -> Metric:
    deliveries = GaugeMetricFamily(
        "outbox_deliveries", "Deliveries known, by status.", labels=["status"]
    )
    for status, count in zip(DeliveryStatus, counts, strict=True):
        deliveries.add_metric([status.value], count)
    return deliveries


def _by_member(
    family: CounterMetricFamily, members: Iterable[StrEnum], counters: dict[bytes, bytes]
) -> Metric:
    """``family`` with a sample per member of an enum, from a Redis hash of counters keyed by
    the members' values (a member never counted is 0)."""
    for member in members:
        family.add_metric([member.value], int(counters.get(member.value.encode(), 0)))
    return family


def _delivery_modes(mode: DeliveryMode) -> Metric:
    modes = GaugeMetricFamily(
        "outbox_delivery_mode",
        "1 for the saved settings' delivery mode (staging: capture or redirect), else 0.",
        labels=["mode"],
    )
    for each in DeliveryMode:
        modes.add_metric([each.value], 1 if each is mode else 0)
    return modes


def _queue_tasks(lengths: list[int]) -> Metric:
    waiting = GaugeMetricFamily(
        "outbox_queue_tasks",
        "Tasks waiting in the broker queues (each carries up to 50 delivery ids).",
        labels=["priority"],
    )
    for priority, length in zip(QUEUES, lengths, strict=True):
        waiting.add_metric([priority.value], length)
    return waiting
