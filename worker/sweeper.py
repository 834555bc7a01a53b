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
from collections.abc import Callable, Sequence
from typing import Protocol

from worker.records import Priority, SweepVerdict
from worker.records.sweeps import SweepStore

__all__ = ["PUBLISH_MARGIN_SECONDS", "Sweeper", "TaskQueue"]

log = logging.getLogger(__name__)

# A queued delivery's score is when its record was stored (or last published); its task is
# stamped when published, a little later, and the tasks of concurrent producers reach the
# queue slightly out of stamp order. This margin covers both, so a waiting task is never
# thought gone.
PUBLISH_MARGIN_SECONDS = 10.0
# A sweep for a delivery due sooner than the interval waits at least this long.
_SOONEST_SECONDS = 0.05


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
        store: SweepStore,
        queue: TaskQueue,
        *,
        interval_seconds: float,
        stranded_after_seconds: float,
        retention_seconds: int,
        # This host's clock: the one its published tasks are stamped with.
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._queue = queue
        self._interval_seconds = interval_seconds
        self._stranded_after_seconds = stranded_after_seconds
        self._retention_seconds = retention_seconds
        self._clock = clock

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
        earliest, now = await self._store.earliest_due()
        if earliest is None:
            return self._interval_seconds
        return min(max(earliest - now, _SOONEST_SECONDS), self._interval_seconds)

    async def sweep(self) -> list[str]:
        """Publish every delivery that is due and would otherwise wait; returns their ids."""
        if not await self._store.take_lock(max(int(self._interval_seconds * 900), 1)):
            return []  # another worker process sweeps this interval
        now = await self._store.now()  # Redis' clock: leases, due times
        published_at = self._clock()  # what the tasks this sweep publishes are stamped with
        oldest = await asyncio.to_thread(self._queue.oldest_published)
        # A delivery published before the oldest task still waiting has left the queue.
        published_before = (published_at if oldest is None else oldest) - PUBLISH_MARGIN_SECONDS
        # Due retries and lapsed claims (by Redis' clock), and queued deliveries published
        # long enough ago that no worker took them and their task has left the queue (by
        # the publishers' clocks).
        candidates = await self._store.candidates(
            now, min(published_at - self._stranded_after_seconds, published_before)
        )
        verdicts = await self._store.verdicts(
            candidates,
            published_at=published_at,
            published_before=published_before,
            look_again_after=self._stranded_after_seconds,
        )
        publish = [
            delivery_id
            for delivery_id, verdict in zip(candidates, verdicts, strict=True)
            if verdict is SweepVerdict.PUBLISH
        ]
        if publish:
            for priority, ids in (await self._store.by_priority(publish)).items():
                await asyncio.to_thread(self._queue.publish, ids, priority)
            log.info("published %d due, lapsed or lost deliveries", len(publish))
        # Final records expire after the retention; their ids leave the indexes with them.
        await self._store.trim_final(now - self._retention_seconds - 60)
        return publish
