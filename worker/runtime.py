"""The per-process worker runtime: an event loop in its own thread and what deliveries share."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis

from config.process import ProcessSettings
from config.redis_location import RedisLocation
from config.secret_box import SecretBox
from config.settings_store import SETTINGS_KEY, StoredSettings
from worker.backoff import RetryPolicy
from worker.deliver import Deliverer, JobOutcome, TransportCache
from worker.lookahead import JobSource, Lookahead
from worker.records import RedisClaims
from worker.records.replication import AsyncFailoverWatch, AsyncReplicaWait
from worker.records.sweeps import SweepStore
from worker.sending_limits import RedisGate
from worker.settings_cache import SettingsCache
from worker.sweeper import Sweeper, TaskQueue
from worker.transports.base import Transport
from worker.transports.factory import HttpClients, create_transport, transport_options
from worker.webhooks import WebhookDispatcher, webhook_client

__all__ = [
    "IN_FLIGHT_PER_CONNECTION",
    "EventLoopThread",
    "WorkerRuntime",
    "fastest_event_loop",
    "quiet_http_logs",
    "worker_redis",
]

T = TypeVar("T")

log = logging.getLogger(__name__)

# Deliveries in progress per connection a process may use: one sending, one being prepared.
IN_FLIGHT_PER_CONNECTION = 2


def fastest_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where it is installed (not on Windows): its transports and TLS are
    compiled, which takes about a tenth off the worker's CPU per message; else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class EventLoopThread:
    """An asyncio loop running in a daemon thread; coroutines are submitted to it.

    One loop per process, started after fork, keeps connections alive between jobs and lets
    several sends of one process be in flight at once.
    """

    def __init__(
        self, new_loop: Callable[[], asyncio.AbstractEventLoop] = fastest_event_loop
    ) -> None:
        self._loop = new_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.submit(coroutine).result()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


def quiet_http_logs() -> None:
    """httpx logs each request's URL at INFO: the sender's mailbox, and the credential that an
    upload session URL carries. Worker logs must hold neither."""
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def worker_redis(location: RedisLocation, **timeouts: float) -> aioredis.Redis:
    """The worker's Redis client: it gives up on a stalled Redis (``TIMEOUTS``, or
    ``timeouts``) and never runs a command again by itself.

    A command whose reply was lost (a timeout, a dropped connection) may have run: redis-py's
    own retries would run a claim or an outcome a second time, unseen. Where that is safe,
    the caller asks again itself (``worker.records.claims.rerun_on_lost_reply``). With
    Sentinel, each new connection asks the sentinels where the primary is, so the next
    command after a failover goes to the promoted replica.
    """
    return location.async_client(**timeouts)


class WorkerRuntime:
    """Owns one process's loop, Redis client, settings cache and transports."""

    def __init__(
        self,
        settings: ProcessSettings,
        *,
        location: RedisLocation,
        box: SecretBox,
        task_queue: TaskQueue,
        next_jobs: JobSource | None = None,
    ) -> None:
        """``next_jobs``: where the process takes its next job itself while a job's last
        sends are in flight (``worker.lookahead``); without it, only the jobs handed in."""
        quiet_http_logs()
        self._loop = EventLoopThread()
        # A stalled Redis fails a job (the sweeper runs it again later) instead of hanging it;
        # the next command reconnects when Redis is back.
        self._redis = worker_redis(location)
        self._options = transport_options(settings)
        self._http = HttpClients.build(self._options)
        self._transports = TransportCache(self._transport_for)
        self._deliverer = _deliverer(settings, self._redis, box, self._transports)
        self._failovers = _failover_watch(location)
        self._replicas = AsyncReplicaWait(
            self._redis,
            min_replicas=settings.min_replicas,
            timeout_seconds=settings.redis_replica_timeout_seconds,
            failovers=self._failovers,
        )
        self._sweeper = Sweeper(
            SweepStore(self._redis),
            task_queue,
            interval_seconds=settings.sweep_interval_seconds,
            stranded_after_seconds=settings.stranded_after_seconds,
            retention_seconds=settings.retention_seconds,
        )
        self._sweeping = self._loop.submit(self._sweeper.run_forever())
        # Webhooks have their own HTTP client and bound on requests in flight, not the
        # e-mails': an endpoint that hangs never holds up an e-mail.
        self._webhook_http = webhook_client(self._options.tls.verified)
        self._webhooks = WebhookDispatcher(
            self._redis, box, self._webhook_http, retention_seconds=settings.retention_seconds
        )
        self._dispatching = self._loop.submit(self._webhooks.run_forever())
        self._lookahead = None if next_jobs is None else Lookahead(next_jobs, self._run_job)

    def _transport_for(self, stored: StoredSettings) -> Transport:
        # Built once per settings version (the cache keeps it): what the administrator chose
        # to weaken is logged once for it.
        for warning in stored.settings.warnings():
            log.warning("mail settings version %d: %s", stored.version, warning)
        return create_transport(stored.settings, self._options, self._http, self._redis)

    def sweep_now(self) -> list[str]:
        """Sweep at once (the loop also sweeps every interval); returns what it published."""
        return self._loop.run(self._sweeper.sweep())

    def deliver(self, delivery_ids: Sequence[str]) -> list[JobOutcome]:
        """Attempt each delivery, concurrently; returns their statuses in order."""
        return self._loop.run(self._deliver_all(delivery_ids))

    async def _deliver_all(self, delivery_ids: Sequence[str]) -> list[JobOutcome]:
        lookahead = self._lookahead
        drained = None if lookahead is None else lookahead.job_drained
        return await self._run_job(delivery_ids, drained)

    async def _run_job(
        self, delivery_ids: Sequence[str], when_drained: Callable[[], None] | None
    ) -> list[JobOutcome]:
        if self._failovers is not None:
            await self._failovers.wait_out(self._redis)
        outcomes = await self._deliverer.deliver_many(delivery_ids, when_drained)
        # Before Celery acknowledges the job: a failover after the acknowledgement must find
        # its outcomes on the promoted replica, or it would send them again.
        await self._replicas.confirm()
        return outcomes

    def close(self) -> None:
        if self._lookahead is not None:
            # The jobs it took are finished and acknowledged: they are no one else's.
            self._loop.run(self._lookahead.finish())
        self._sweeping.cancel()
        self._dispatching.cancel()
        self._loop.run(self._aclose())
        self._loop.stop()

    async def _aclose(self) -> None:
        await self._webhooks.aclose()
        await self._webhook_http.aclose()
        await self._transports.aclose()
        await self._http.aclose()
        await self._redis.aclose()
        if self._failovers is not None:
            await self._failovers.aclose()


def _deliverer(
    settings: ProcessSettings, client: aioredis.Redis, box: SecretBox, transports: TransportCache
) -> Deliverer:
    """The process's ``Deliverer``: claims, settings and sending limits in Redis, the retry
    policy, and a bound on deliveries in flight."""
    return Deliverer(
        claims=RedisClaims(
            client,
            settings_key=SETTINGS_KEY,
            lease_seconds=settings.claim_lease_seconds,
            max_attempts=settings.max_attempts,
            retention_seconds=settings.retention_seconds,
        ),
        settings=SettingsCache(client, box),
        transports=transports,
        policy=RetryPolicy(
            base_seconds=settings.retry_base_seconds,
            max_seconds=settings.retry_max_seconds,
            max_attempts=settings.max_attempts,
        ),
        gate=RedisGate(client, rate_pause_seconds=settings.provider_pause_seconds),
        in_flight=asyncio.Semaphore(
            IN_FLIGHT_PER_CONNECTION
            * max(settings.smtp_max_connections, settings.graph_max_concurrency)
        ),
    )


def _failover_watch(location: RedisLocation) -> AsyncFailoverWatch | None:
    """What watches the sentinels for a failover; None without Sentinel."""
    target = location.sentinel
    if target is None:
        return None
    return AsyncFailoverWatch(location.async_sentinel_clients(), target.master_name)
