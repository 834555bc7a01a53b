"""Limits on requests in flight: per process (asyncio) or per mailbox across processes (Redis)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Protocol

import redis.asyncio as aioredis

__all__ = ["ConcurrencyLimit", "LocalLimit", "SharedLimit"]

# KEYS: the slot set; ARGV: now, lease end, token, limit -> 1 when a slot was taken.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
  return 1
end
return 0
"""


class ConcurrencyLimit(Protocol):
    """``async with limit.slot():`` runs the block once fewer than the limit are inside."""

    def slot(self) -> contextlib.AbstractAsyncContextManager[None]: ...


class LocalLimit:
    """At most ``limit`` at once in this process."""

    def __init__(self, limit: int) -> None:
        self._semaphore = asyncio.Semaphore(limit)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._semaphore:
            yield


class SharedLimit:
    """At most ``limit`` at once across every process sharing the Redis key.

    Slots are leases in a sorted set, so a process that dies holding one frees it when the
    lease ends. Waiters poll briefly; the requests this guards take tens of milliseconds.
    """

    POLL_SECONDS = 0.005

    def __init__(
        self, client: aioredis.Redis, key: str, limit: int, *, lease_seconds: float
    ) -> None:
        self._key = key
        self._limit = limit
        self._lease_seconds = lease_seconds
        self._acquire = client.register_script(_ACQUIRE)
        self._client = client
        # Wait locally first: a process never asks Redis for more slots than the limit.
        self._local = asyncio.Semaphore(limit)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._local:
            token = uuid.uuid4().hex
            while True:
                now = time.time()
                taken = await self._acquire(
                    keys=[self._key],
                    args=[repr(now), repr(now + self._lease_seconds), token, self._limit],
                )
                if taken:
                    break
                await asyncio.sleep(self.POLL_SECONDS)
            try:
                # A slot is a lease: work that outlives it would let another process in, so
                # the work is cut off before the lease ends.
                async with asyncio.timeout(self._lease_seconds * 0.9):
                    yield
            finally:
                await self._client.zrem(self._key, token)
