"""Acknowledged means replicated: Redis ``WAIT`` before an enqueue or an outcome is answered.

Replication is asynchronous: a primary that dies right after it answered can take its last
writes with it, and Sentinel then promotes a replica that never saw them. So a producer is
answered only once ``min_replicas`` replicas hold what it wrote, and a worker acknowledges its
job only once they hold the job's outcomes.

``WAIT`` covers the writes of the connection it is sent on, and an enqueue writes on several
(the records' pool, kombu's own). Replication is one ordered stream, though: a marker written
after everything else and ``WAIT`` on the marker's connection (one pipeline, so one
connection) cover every write that finished before it.

Before an enqueue stores anything, the primary's own view of its replicas (``INFO
replication``, at most a second old) refuses it when too few are in sync, so nothing is stored
that could not be acknowledged. A worker goes on without replicas (an outcome unrecorded would
be worse than one unreplicated), skips the ``WAIT`` that could not succeed, and logs it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis
import redis.asyncio as aioredis

from worker.errors import TooFewReplicasError

__all__ = [
    "HEALTHY_LAG_SECONDS",
    "MARKER_KEY",
    "AsyncReplicaWait",
    "ReplicaWait",
    "in_sync_replicas",
]

log = logging.getLogger(__name__)

# Written (INCR) after the writes an acknowledgement covers; its value means nothing.
MARKER_KEY = "outbox:replication-marker"
# A replica counts as in sync when it acknowledged the replication stream this recently
# (replicas acknowledge every second); a partitioned one stays listed for repl-timeout (60 s).
HEALTHY_LAG_SECONDS = 3
# How long the primary's view of its replicas is believed.
VIEW_SECONDS = 1.0
# A worker's failed WAIT is logged at most this often per process.
LOG_EVERY_SECONDS = 30.0
# An enqueue refused for want of replicas is worth trying again after about this long.
RETRY_AFTER_SECONDS = 5.0


def in_sync_replicas(info: Mapping[str, Any]) -> int:
    """The replicas that ``INFO replication`` (as redis-py parses it) shows online and recently
    acknowledging."""
    return sum(
        1
        for name, value in info.items()
        if name.startswith("slave")
        and isinstance(value, Mapping)
        and value.get("state") == "online"
        and int(value.get("lag", HEALTHY_LAG_SECONDS + 1)) <= HEALTHY_LAG_SECONDS
    )


class _View:
    """The primary's count of in-sync replicas, read at most once a ``VIEW_SECONDS``."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._count = 0
        self._read_at = float("-inf")

    def fresh(self) -> int | None:
        return self._count if self._clock() - self._read_at < VIEW_SECONDS else None

    def remember(self, count: int) -> int:
        self._count, self._read_at = count, self._clock()
        return count


class ReplicaWait:
    """For producers (synchronous clients): refuse an enqueue while too few replicas are in
    sync, and answer it only once ``min_replicas`` hold it. With ``min_replicas`` 0 it sends
    nothing at all."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        min_replicas: int,
        timeout_seconds: float,
        where: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self.min_replicas = min_replicas
        self._timeout_ms = max(1, int(timeout_seconds * 1000))
        self._where = where
        self._view = _View(clock)

    def require(self) -> None:
        """Raise ``TooFewReplicasError`` (nothing stored yet) while the primary has fewer
        replicas in sync than the minimum."""
        if not self.min_replicas:
            return
        count = self._view.fresh()
        if count is None:
            count = self._view.remember(in_sync_replicas(self._client.info("replication")))
        if count < self.min_replicas:
            raise TooFewReplicasError(
                f"{self._where} has {count} replica(s) in sync, fewer than "
                f"OUTBOX_REDIS_MIN_REPLICAS={self.min_replicas}: enqueues are refused until "
                "enough replicas are back; nothing was stored",
                retry_after=RETRY_AFTER_SECONDS,
            )

    def confirm(self) -> None:
        """Wait until ``min_replicas`` replicas hold every write made before this call; a
        ``TooFewReplicasError`` otherwise (what was written stays, and will be sent)."""
        if not self.min_replicas:
            return
        pipe = self._client.pipeline(transaction=False)
        pipe.incr(MARKER_KEY)
        pipe.wait(self.min_replicas, self._timeout_ms)
        _, acknowledged = pipe.execute()
        if int(acknowledged) < self.min_replicas:
            self._view.remember(int(acknowledged))
            raise TooFewReplicasError(
                f"only {acknowledged} of the {self.min_replicas} replica(s) that "
                f"OUTBOX_REDIS_MIN_REPLICAS asks for acknowledged the write within "
                f"{self._timeout_ms} ms at {self._where}; it is stored and will be sent, "
                "so try again with the same idempotency key",
                retry_after=RETRY_AFTER_SECONDS,
            )


class AsyncReplicaWait:
    """For workers: wait until ``min_replicas`` replicas hold a job's outcomes before the job
    is acknowledged; never fail for it."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        min_replicas: int,
        timeout_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self.min_replicas = min_replicas
        self._timeout_ms = max(1, int(timeout_seconds * 1000))
        self._clock = clock
        self._view = _View(clock)
        self._logged_at = float("-inf")

    async def confirm(self) -> bool:
        """Whether ``min_replicas`` replicas acknowledged every write made before this call.
        Skips the ``WAIT`` while the primary has too few in sync; logs a shortfall."""
        if not self.min_replicas:
            return True
        count = self._view.fresh()
        if count is None:
            count = self._view.remember(in_sync_replicas(await self._client.info("replication")))
        if count >= self.min_replicas:
            pipe = self._client.pipeline(transaction=False)
            pipe.incr(MARKER_KEY)
            pipe.wait(self.min_replicas, self._timeout_ms)
            _, acknowledged = await pipe.execute()
            count = int(acknowledged)
            if count >= self.min_replicas:
                return True
            self._view.remember(count)
        if self._clock() - self._logged_at >= LOG_EVERY_SECONDS:
            self._logged_at = self._clock()
            log.warning(
                "outcomes recorded but held by %d of the %d Redis replica(s) that "
                "OUTBOX_REDIS_MIN_REPLICAS asks for: a failover now could send them again",
                count,
                self.min_replicas,
            )
        return False
