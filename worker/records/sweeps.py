"""The records' side of a sweep: the lock, the due set, the queued index, the SWEEP script's
verdicts and the trimming of final ids, by Redis' clock. The sweeper (``worker.sweeper``)
decides when and what to publish; every Redis access it needs is here."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import redis.asyncio as aioredis

from config.redis_keys import SWEEPER_LOCK
from worker.records.claims import rerun_on_lost_reply
from worker.records.codec import PRIORITY_FIELD, as_text
from worker.records.keys import DUE_KEY, record_key, status_index_key
from worker.records.model import FINAL_STATUSES, DeliveryStatus, Priority
from worker.records.scripts import SWEEP, SweepVerdict, decode_sweep, sweep_call

__all__ = ["SweepStore"]

_MOST_PER_SWEEP = 5000
# KEYS: the lock; ARGV: this process's token, milliseconds -> 1 when this process sweeps.
_LOCK = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


class SweepStore:
    """What a sweep reads and changes in Redis; times are Redis' unix seconds unless named
    as a publisher's."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client
        self._sweep = client.register_script(SWEEP)
        self._lock = client.register_script(_LOCK)
        # The process holding the lock keeps it while it sweeps, however often it must.
        self._token = uuid.uuid4().hex

    async def now(self) -> float:
        return _unix_seconds(await self._redis.time())

    async def earliest_due(self) -> tuple[float | None, float]:
        """When the soonest delivery is due (None: none is), and Redis' time now."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrange(DUE_KEY, 0, 0, withscores=True)
        pipe.time()
        earliest, now = await pipe.execute()
        return (float(earliest[0][1]) if earliest else None), _unix_seconds(now)

    async def take_lock(self, milliseconds: int) -> bool:
        """Whether this process sweeps now: it holds (or took) the lock for ``milliseconds``."""
        return bool(await self._lock(keys=[SWEEPER_LOCK.pattern], args=[self._token, milliseconds]))

    async def candidates(self, due_by: float, queued_before: float) -> list[str]:
        """The ids due by ``due_by`` (Redis' clock), and the queued ones last published
        before ``queued_before`` (the publishers' clocks), each once, at most a bound of each."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrangebyscore(DUE_KEY, "-inf", due_by, start=0, num=_MOST_PER_SWEEP)
        pipe.zrangebyscore(
            status_index_key(DeliveryStatus.QUEUED),
            "-inf",
            queued_before,
            start=0,
            num=_MOST_PER_SWEEP,
        )
        due, stranded = await pipe.execute()
        return list(dict.fromkeys(as_text(raw) for raw in (*due, *stranded)))

    async def verdicts(
        self,
        candidates: Sequence[str],
        *,
        published_at: float,
        published_before: float,
        look_again_after: float,
    ) -> list[SweepVerdict]:
        """Each candidate's verdict by the SWEEP script (which moves those it publishes);
        asked again after a lost reply, it answers the same."""
        if not candidates:
            return []

        async def judge() -> list[SweepVerdict]:
            pipe = self._redis.pipeline(transaction=False)
            for delivery_id in candidates:
                call = sweep_call(
                    delivery_id,
                    published_at=published_at,
                    published_before=published_before,
                    look_again_after=look_again_after,
                )
                await self._sweep(keys=call.keys, args=call.args, client=pipe)
            return [decode_sweep(reply) for reply in await pipe.execute()]

        return await rerun_on_lost_reply(judge)

    async def by_priority(self, delivery_ids: Sequence[str]) -> dict[Priority, list[str]]:
        """The ids grouped by their record's priority, high first: a retry keeps its queue."""
        pipe = self._redis.pipeline(transaction=False)
        for delivery_id in delivery_ids:
            pipe.hget(record_key(delivery_id), PRIORITY_FIELD)
        grouped: dict[Priority, list[str]] = {priority: [] for priority in Priority}
        for delivery_id, raw in zip(delivery_ids, await pipe.execute(), strict=True):
            grouped[Priority(as_text(raw)) if raw else Priority.NORMAL].append(delivery_id)
        return {priority: ids for priority, ids in grouped.items() if ids}

    async def trim_final(self, expired_before: float) -> None:
        """Drop from the final statuses' indexes the ids whose records have expired."""
        pipe = self._redis.pipeline(transaction=False)
        for status in FINAL_STATUSES:
            pipe.zremrangebyscore(status_index_key(status), "-inf", expired_before)
        await pipe.execute()


def _unix_seconds(time_reply: tuple[int, int]) -> float:
    """Redis' ``TIME`` reply as unix seconds."""
    seconds, micros = time_reply
    return seconds + micros / 1e6
