"""Acknowledged means replicated: Redis ``WAIT`` before an enqueue or an outcome is answered.

Replication is asynchronous: a primary that dies right after it answered can take its last
writes with it, and Sentinel then promotes a replica that never saw them. So a producer is
answered only once ``min_replicas`` replicas hold what it wrote, and a worker acknowledges its
job only once they hold the job's outcomes.

``WAIT`` covers the writes of the connection it is sent on, and an enqueue writes on several
(the records' pool, kombu's own). Replication is one ordered stream, though: a marker written
after everything else and ``WAIT`` on the marker's connection (one pipeline, so one
connection) cover every write that finished before it.

``WAIT`` alone is not enough in one case: a promotion of a replica while the primary still
runs (``SENTINEL FAILOVER``, or a primary the sentinels believe down that is not). Until the
sentinels have moved the other replicas to the promoted one, they still acknowledge the old
primary's writes, which are thrown away when it becomes a replica. So with Sentinel, a write
is acknowledged only if, after its ``WAIT``, no sentinel reports a failover of the master
under way (``FailoverWatch``); once the sentinels have finished one, the old primary has no
replicas left and its ``WAIT`` fails by itself.

Before an enqueue stores anything, the primary's own view of its replicas (``INFO
replication``, at most a second old) refuses it when too few are in sync, so nothing is stored
that could not be acknowledged. A worker goes on without replicas (an outcome unrecorded would
be worse than one unreplicated), skips the ``WAIT`` that could not succeed, and logs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelConnectionPool
from redis.sentinel import SentinelConnectionPool

from config.errors import TooFewReplicasError
from config.redis_keys import REPLICATION_MARKER

__all__ = [
    "HEALTHY_LAG_SECONDS",
    "MARKER_KEY",
    "AsyncFailoverWatch",
    "AsyncReplicaWait",
    "FailoverWatch",
    "ReplicaWait",
    "failing_over",
    "in_sync_replicas",
    "primary_named",
    "sentinel_state",
]

log = logging.getLogger(__name__)

# Written (INCR) after the writes an acknowledgement covers; its value means nothing.
MARKER_KEY = REPLICATION_MARKER.pattern
# A replica counts as in sync when it acknowledged the replication stream this recently
# (replicas acknowledge every second); a partitioned one stays listed for repl-timeout (60 s).
HEALTHY_LAG_SECONDS = 3
# How long the primary's view of its replicas is believed.
VIEW_SECONDS = 1.0
# A worker's failed WAIT is logged at most this often per process.
LOG_EVERY_SECONDS = 30.0
# An enqueue refused for want of replicas is worth trying again after about this long.
RETRY_AFTER_SECONDS = 5.0
# A sentinel that did not answer is not asked again for this long (each ask would wait for
# its timeout).
SENTINEL_QUIET_SECONDS = 5.0
# A job waits at most this long for a failover to end (a sentinel's failover-timeout is
# longer, but one that runs this long has stalled), asking every so often.
LONGEST_FAILOVER_WAIT_SECONDS = 30.0
FAILOVER_POLL_SECONDS = 0.25


def failing_over(state: Mapping[str, Any]) -> bool:
    """Whether a sentinel's view of a master (``SENTINEL MASTER``, as redis-py parses it)
    says that this sentinel is running a failover of it."""
    flags = state.get("flags", "")
    names = flags if isinstance(flags, set) else set(str(flags).split(","))
    return "failover_in_progress" in names


def sentinel_state(reply: Any) -> dict[str, str]:
    """A raw ``SENTINEL MASTER`` reply as a dict of text: RESP3's map, or RESP2's flat list
    of names and values."""

    def text(item: Any) -> str:
        return item.decode() if isinstance(item, bytes) else str(item)

    if isinstance(reply, Mapping):
        return {text(name): text(value) for name, value in reply.items()}
    items = [text(item) for item in reply]
    return dict(zip(items[::2], items[1::2], strict=True))


def primary_named(state: Mapping[str, Any]) -> tuple[str, int]:
    """Where a sentinel's view of a master says the primary is."""
    return str(state.get("ip")), int(state.get("port", 0))


class _SentinelsToAsk:
    """The sentinels in turn, leaving out for a while those that did not answer."""

    def __init__(self, count: int, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._quiet_until = [float("-inf")] * count

    def askable(self) -> list[int]:
        now = self._clock()
        return [i for i, until in enumerate(self._quiet_until) if now >= until]

    def failed(self, index: int) -> None:
        self._quiet_until[index] = self._clock() + SENTINEL_QUIET_SECONDS


class FailoverWatch:
    """Asks every sentinel whether it is running a failover of the master, and notes where
    each one says the primary is."""

    def __init__(
        self,
        sentinels: Sequence[redis.Redis],
        master_name: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sentinels = list(sentinels)
        self._master_name = master_name
        self._ask = _SentinelsToAsk(len(self._sentinels), clock)
        self._named: set[tuple[str, int]] = set()

    def under_way(self) -> bool:
        # Every sentinel is asked before any answer is read: one round trip, not one each.
        asked = []
        for index in self._ask.askable():
            pool = self._sentinels[index].connection_pool
            try:
                connection = pool.get_connection()
            except redis.RedisError:
                self._ask.failed(index)
                continue
            try:
                connection.send_command(  # type: ignore[no-untyped-call]
                    "SENTINEL", "MASTER", self._master_name
                )
            except redis.RedisError:
                connection.disconnect()  # type: ignore[no-untyped-call]
                pool.release(connection)
                self._ask.failed(index)
                continue
            asked.append((index, pool, connection))
        named: set[tuple[str, int]] = set()
        failover = False
        for index, pool, connection in asked:
            try:
                state = sentinel_state(connection.read_response())
            except redis.ResponseError:
                continue  # a sentinel that does not watch this master
            except redis.RedisError:
                connection.disconnect()  # type: ignore[no-untyped-call]
                self._ask.failed(index)
                continue
            finally:
                pool.release(connection)
            named.add(primary_named(state))
            failover = failover or failing_over(state)
        self._named = named
        return failover

    def follow(self, client: redis.Redis) -> None:
        """Point ``client``'s idle connections at the primary the sentinels named when last
        asked, if that is not where they point: after a promotion, the old primary goes on
        answering as one until the sentinels demote it. Asks the sentinels only then."""
        pool = client.connection_pool
        if not isinstance(pool, SentinelConnectionPool):
            return
        if self._named and self._named != {pool.master_address}:
            with contextlib.suppress(redis.RedisError):  # the next command will say it
                pool.get_master_address()  # type: ignore[no-untyped-call]

    def close(self) -> None:
        for sentinel in self._sentinels:
            sentinel.close()


class AsyncFailoverWatch:
    """``FailoverWatch`` for asynchronous clients (the workers)."""

    def __init__(
        self,
        sentinels: Sequence[aioredis.Redis],
        master_name: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sentinels = list(sentinels)
        self._master_name = master_name
        self._clock = clock
        self._ask = _SentinelsToAsk(len(self._sentinels), clock)

    async def under_way(self) -> bool:
        askable = self._ask.askable()
        answers = await asyncio.gather(
            *(self._sentinels[i].sentinel_master(self._master_name) for i in askable),
            return_exceptions=True,
        )
        failover = False
        for index, answer in zip(askable, answers, strict=True):
            if isinstance(answer, redis.ResponseError):
                continue  # a sentinel that does not watch this master
            if isinstance(answer, BaseException):
                if not isinstance(answer, redis.RedisError):
                    raise answer
                self._ask.failed(index)
            elif isinstance(answer, Mapping):
                failover = failover or failing_over(answer)
        return failover

    async def wait_out(self, client: aioredis.Redis) -> None:
        """Before a job: while a sentinel runs a failover, wait (up to
        ``LONGEST_FAILOVER_WAIT_SECONDS``) instead of sending on a primary about to be
        replaced, whose records of it would be lost; then point ``client``'s idle
        connections at the primary the sentinels name."""
        deadline = self._clock() + LONGEST_FAILOVER_WAIT_SECONDS
        while await self.under_way() and self._clock() < deadline:
            await asyncio.sleep(FAILOVER_POLL_SECONDS)
        pool = client.connection_pool
        if isinstance(pool, AsyncSentinelConnectionPool):
            with contextlib.suppress(redis.RedisError):  # the job's own commands will say it
                await pool.get_master_address()  # type: ignore[no-untyped-call]

    async def aclose(self) -> None:
        for sentinel in self._sentinels:
            await sentinel.aclose()


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
        failovers: FailoverWatch | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._failovers = failovers
        self.min_replicas = min_replicas
        self._timeout_ms = max(1, int(timeout_seconds * 1000))
        self._where = where
        self._view = _View(clock)

    def require(self) -> None:
        """Raise ``TooFewReplicasError`` (nothing stored yet) while the primary has fewer
        replicas in sync than the minimum."""
        if not self.min_replicas:
            return
        if self._failovers is not None:
            self._failovers.follow(self._client)
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
        if self._failovers is not None and self._failovers.under_way():
            raise TooFewReplicasError(
                f"a failover of {self._where} is under way, so the replicas that acknowledged "
                "the write may not keep it; it is stored and may be sent, so try again with "
                "the same idempotency key",
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
        failovers: AsyncFailoverWatch | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._failovers = failovers
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
                if self._failovers is None or not await self._failovers.under_way():
                    return True
                count = 0  # the replicas that acknowledged are about to start over
            else:
                self._view.remember(count)
        if self._clock() - self._logged_at >= LOG_EVERY_SECONDS:
            self._logged_at = self._clock()
            log.warning(
                "outcomes recorded but acknowledged by %d of the %d Redis replica(s) that "
                "OUTBOX_REDIS_MIN_REPLICAS asks for (or during a failover): a failover now "
                "could send them again",
                count,
                self.min_replicas,
            )
        return False
