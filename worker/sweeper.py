"""The sweeper: publishes what no task will otherwise run (due retries, lapsed claims, queued
deliveries whose task was lost) and keeps the status indexes bounded.

One worker process sweeps each interval (a lock in Redis); the work of one sweep is bounded.
Publishing is only ever a hint: the claim decides, so a delivery published twice is sent
once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import redis.asyncio as aioredis

from worker.records import (
    DUE_KEY,
    FINAL_STATUSES,
    KEY_PREFIX,
    SweepVerdict,
    status_index_key,
)
from worker.records.codec import as_text
from worker.records.scripts import SWEEP, decode_sweep, sweep_call

__all__ = ["DISPATCH_MARGIN_SECONDS", "Sweeper", "TaskQueue"]

log = logging.getLogger(__name__)

_LOCK_KEY = f"{KEY_PREFIX}sweeper"
# Producers stamp a task when they publish it, not when they store its records: a task
# published this much after its stamp might otherwise be thought consumed.
DISPATCH_MARGIN_SECONDS = 10.0
_MOST_PER_SWEEP = 5000


class TaskQueue(Protocol):
    """The broker's queue of send tasks, as the sweeper sees it (``tasks.celery_app``)."""

    def publish(self, delivery_ids: Sequence[str]) -> None:
        """Publish send tasks for these deliveries (in chunks, as the producer does)."""

    def oldest_dispatch(self) -> float | None:
        """When the oldest task still waiting in the queue was published; None when none
        waits (an unknown task counts as infinitely old: nothing is judged lost then)."""


class Sweeper:
    def __init__(
        self,
        client: aioredis.Redis,
        queue: TaskQueue,
        *,
        interval_seconds: float,
        stranded_after_seconds: float,
        retention_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = client
        self._queue = queue
        self._interval_seconds = interval_seconds
        self._stranded_after_seconds = stranded_after_seconds
        self._retention_seconds = retention_seconds
        self._clock = clock
        self._sweep = client.register_script(SWEEP)

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval_seconds)
            try:
                await self.sweep()
            except Exception:  # a sweep that failed (Redis away) is tried again next interval
                log.warning("sweep failed", exc_info=True)

    async def sweep(self) -> list[str]:
        """Publish every delivery that is due and would otherwise wait; returns their ids."""
        lock_ms = max(int(self._interval_seconds * 900), 1)
        if not await self._redis.set(_LOCK_KEY, "1", nx=True, px=lock_ms):
            return []  # another worker process swept this interval
        now = self._clock()
        oldest = await asyncio.to_thread(self._queue.oldest_dispatch)
        dispatched_before = (now if oldest is None else oldest) - DISPATCH_MARGIN_SECONDS
        due = [
            as_text(raw)
            for raw in await self._redis.zrangebyscore(
                DUE_KEY, "-inf", now, start=0, num=_MOST_PER_SWEEP
            )
        ]
        verdicts = await self._judge(due, now, dispatched_before)
        publish = [
            delivery_id
            for delivery_id, verdict in zip(due, verdicts, strict=True)
            if verdict is SweepVerdict.PUBLISH
        ]
        if publish:
            await asyncio.to_thread(self._queue.publish, publish)
            log.info("published %d due, lapsed or lost deliveries", len(publish))
        await self._trim_indexes(now)
        return publish

    async def _judge(
        self, due: list[str], now: float, dispatched_before: float
    ) -> list[SweepVerdict]:
        if not due:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for delivery_id in due:
            call = sweep_call(
                delivery_id,
                now=now,
                dispatched_before=dispatched_before,
                look_again_after=self._stranded_after_seconds,
            )
            await self._sweep(keys=call.keys, args=call.args, client=pipe)
        return [decode_sweep(reply) for reply in await pipe.execute()]

    async def _trim_indexes(self, now: float) -> None:
        """Final records expire after the retention; their ids leave the indexes with them."""
        expired_before = now - self._retention_seconds - 60
        pipe = self._redis.pipeline(transaction=False)
        for status in FINAL_STATUSES:
            pipe.zremrangebyscore(status_index_key(status), "-inf", expired_before)
        await pipe.execute()
