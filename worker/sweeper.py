"""The sweeper: publishes what no task will otherwise run (due retries, lapsed claims, queued
deliveries whose task was lost) and keeps the status indexes bounded.

One worker process sweeps each interval (a lock in Redis); the work of one sweep is bounded.
Publishing is only ever a hint: the claim decides, so a delivery published twice is sent
once. Leases and due times are read by Redis' clock, as the scripts that set them wrote
them; only publication times (the stamps on tasks) are this host's.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Protocol

import redis.asyncio as aioredis

from config.redis_keys import SWEEPER_LOCK
from worker.records import (
    DUE_KEY,
    FINAL_STATUSES,
    DeliveryStatus,
    Priority,
    SweepVerdict,
    record_key,
    status_index_key,
)
from worker.records.claims import rerun_on_lost_reply
from worker.records.codec import PRIORITY_FIELD, as_text
from worker.records.scripts import SWEEP, decode_sweep, sweep_call

__all__ = ["PUBLISH_MARGIN_SECONDS", "Sweeper", "TaskQueue"]

log = logging.getLogger(__name__)

_LOCK_KEY = SWEEPER_LOCK.pattern
# A queued delivery's score is when its record was stored (or last published); its task is
# stamped when published, a little later, and the tasks of concurrent producers reach the
# queue slightly out of stamp order. This margin covers both, so a waiting task is never
# thought gone.
PUBLISH_MARGIN_SECONDS = 10.0
_MOST_PER_SWEEP = 5000
# A sweep for a delivery due sooner than the interval waits at least this long.
_SOONEST_SECONDS = 0.05
# KEYS: the lock; ARGV: this process's token, milliseconds -> 1 when this process sweeps.
_LOCK = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


class TaskQueue(Protocol):
    """The broker's queue of send tasks, as the sweeper sees it (``tasks.celery_app``)."""

    def publish(self, delivery_ids: Sequence[str], priority: Priority) -> None:
        """Publish send tasks for these deliveries (in chunks, as the producer does) into
        the queue of ``priority``."""

    def oldest_published(self) -> float | None:
        """When the oldest task still waiting in the queue was published; None when none
        waits (an unknown task counts as infinitely old: nothing is judged lost then)."""


class Sweeper:
    """Runs in every worker process; each interval, the one that takes the lock sweeps."""

    def __init__(
        self,
        client: aioredis.Redis,
        queue: TaskQueue,
        *,
        interval_seconds: float,
        stranded_after_seconds: float,
        retention_seconds: int,
        # This host's clock: the one its published tasks are stamped with.
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = client
        self._queue = queue
        self._interval_seconds = interval_seconds
        self._stranded_after_seconds = stranded_after_seconds
        self._retention_seconds = retention_seconds
        self._clock = clock
        self._sweep = client.register_script(SWEEP)
        self._lock = client.register_script(_LOCK)
        # The process holding the lock keeps it while it sweeps, however often it must.
        self._token = uuid.uuid4().hex

    async def run_forever(self) -> None:
        while True:
            try:
                await asyncio.sleep(await self._until_next_sweep())
                await self.sweep()
            except Exception:  # a sweep that failed (Redis away) is tried again next interval
                log.warning("sweep failed", exc_info=True)
                await asyncio.sleep(self._interval_seconds)

    async def _until_next_sweep(self) -> float:
        """An interval, or less when a delivery is due sooner: an e-mail waiting for its place
        in the sending limit goes out when the place comes, not up to an interval later."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrange(DUE_KEY, 0, 0, withscores=True)
        pipe.time()
        earliest, now = await pipe.execute()
        if not earliest:
            return self._interval_seconds
        due_in = float(earliest[0][1]) - _unix_seconds(now)
        return min(max(due_in, _SOONEST_SECONDS), self._interval_seconds)

    async def sweep(self) -> list[str]:
        """Publish every delivery that is due and would otherwise wait; returns their ids."""
        lock_ms = max(int(self._interval_seconds * 900), 1)
        if not await self._lock(keys=[_LOCK_KEY], args=[self._token, lock_ms]):
            return []  # another worker process sweeps this interval
        now = _unix_seconds(await self._redis.time())  # Redis' clock: leases, due times
        published_at = self._clock()  # what the tasks this sweep publishes are stamped with
        oldest = await asyncio.to_thread(self._queue.oldest_published)
        # A delivery published before the oldest task still waiting has left the queue.
        published_before = (published_at if oldest is None else oldest) - PUBLISH_MARGIN_SECONDS
        candidates = await self._candidates(now, published_at, published_before)
        verdicts = await rerun_on_lost_reply(
            lambda: self._judge(candidates, published_at, published_before)
        )
        publish = [
            delivery_id
            for delivery_id, verdict in zip(candidates, verdicts, strict=True)
            if verdict is SweepVerdict.PUBLISH
        ]
        if publish:
            for priority, ids in (await self._by_priority(publish)).items():
                await asyncio.to_thread(self._queue.publish, ids, priority)
            log.info("published %d due, lapsed or lost deliveries", len(publish))
        await self._trim_indexes(now)
        return publish

    async def _candidates(
        self, now: float, published_at: float, published_before: float
    ) -> list[str]:
        """Due retries and lapsed claims (the due set, by Redis' clock), and queued deliveries
        published long enough ago that no worker took them and that their task has left the
        queue (by the publishers' clocks)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrangebyscore(DUE_KEY, "-inf", now, start=0, num=_MOST_PER_SWEEP)
        pipe.zrangebyscore(
            status_index_key(DeliveryStatus.QUEUED),
            "-inf",
            min(published_at - self._stranded_after_seconds, published_before),
            start=0,
            num=_MOST_PER_SWEEP,
        )
        due, stranded = await pipe.execute()
        return list(dict.fromkeys(as_text(raw) for raw in (*due, *stranded)))

    async def _judge(
        self, candidates: list[str], published_at: float, published_before: float
    ) -> list[SweepVerdict]:
        """Each candidate's verdict; run again after a lost reply, it answers the same."""
        if not candidates:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for delivery_id in candidates:
            call = sweep_call(
                delivery_id,
                published_at=published_at,
                published_before=published_before,
                look_again_after=self._stranded_after_seconds,
            )
            await self._sweep(keys=call.keys, args=call.args, client=pipe)
        return [decode_sweep(reply) for reply in await pipe.execute()]

    async def _by_priority(self, delivery_ids: list[str]) -> dict[Priority, list[str]]:
        """The ids grouped by their record's priority, high first: a retry keeps its queue."""
        pipe = self._redis.pipeline(transaction=False)
        for delivery_id in delivery_ids:
            pipe.hget(record_key(delivery_id), PRIORITY_FIELD)
        grouped: dict[Priority, list[str]] = {priority: [] for priority in Priority}
        for delivery_id, raw in zip(delivery_ids, await pipe.execute(), strict=True):
            grouped[Priority(as_text(raw)) if raw else Priority.NORMAL].append(delivery_id)
        return {priority: ids for priority, ids in grouped.items() if ids}

    async def _trim_indexes(self, now: float) -> None:
        """Final records expire after the retention; their ids leave the indexes with them."""
        expired_before = now - self._retention_seconds - 60
        pipe = self._redis.pipeline(transaction=False)
        for status in FINAL_STATUSES:
            pipe.zremrangebyscore(status_index_key(status), "-inf", expired_before)
        await pipe.execute()


def _unix_seconds(time_reply: tuple[int, int]) -> float:
    """Redis' ``TIME`` reply as unix seconds."""
    seconds, micros = time_reply
    return seconds + micros / 1e6
