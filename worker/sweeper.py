"""The safety net for lost jobs: deliveries whose claim long expired or whose retry is long
overdue (their task message was lost, e.g. with the broker's data) are queued again."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis.asyncio as aioredis

from worker.deliver import RetryScheduler
from worker.records import KEY_PREFIX, DeliveryStatus, status_index_key

__all__ = ["SWEEP_INTERVAL_SECONDS", "StuckDeliverySweeper"]

log = logging.getLogger(__name__)

SWEEP_INTERVAL_SECONDS = 60.0
_LOCK_KEY = f"{KEY_PREFIX}sweeper"
# Beyond the lease itself: a claim this much older than its lease belongs to no live job.
_GRACE_SECONDS = 60.0


class StuckDeliverySweeper:
    """Finds stuck deliveries; one process of all the workers sweeps each interval."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        lease_seconds: float,
        overdue_retry_seconds: float,
        schedule_retry: RetryScheduler,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = client
        self._lease_seconds = lease_seconds
        self._overdue_retry_seconds = overdue_retry_seconds
        self._schedule_retry = schedule_retry
        self._clock = clock

    async def sweep(self) -> list[str]:
        """Queue every stuck delivery again (claims deduplicate); returns their ids."""
        if not await self._redis.set(_LOCK_KEY, "1", nx=True, ex=int(SWEEP_INTERVAL_SECONDS) - 5):
            return []  # another worker process swept this interval
        now = self._clock()
        # Scores are when each record last changed: the claim, or the recorded retry.
        expired_claims = await self._redis.zrangebyscore(
            status_index_key(DeliveryStatus.SENDING),
            "-inf",
            now - self._lease_seconds - _GRACE_SECONDS,
        )
        overdue_retries = await self._redis.zrangebyscore(
            status_index_key(DeliveryStatus.RETRYING), "-inf", now - self._overdue_retry_seconds
        )
        stuck = [raw.decode() for raw in (*expired_claims, *overdue_retries)]
        for delivery_id in stuck:
            self._schedule_retry(delivery_id, 0.0)
        if stuck:
            log.warning("queued %d stuck deliveries again (their jobs were lost)", len(stuck))
        return stuck
