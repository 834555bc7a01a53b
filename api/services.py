"""What the API's routes use, built once per process from the OutboxContext."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import cached_property

import redis.asyncio as aioredis
from celery import Celery
from fastapi import Request

from api.key_limits import KeyQuota
from config.api_keys import ApiKeyStore, AsyncKeyLookup
from config.sessions import SessionStore
from tasks.celery_app import TaskMessages, create_celery_app, producer_for
from tasks.context import OutboxContext
from tasks.producer import AsyncEnqueue, Producer
from tasks.reports.service import ReportService, report_service
from worker.records.enqueue import AsyncEnqueuer

__all__ = ["ApiServices", "LoopServices", "services"]


@dataclass(frozen=True, slots=True)
class LoopServices:
    """What the routes that run on the event loop use: one asynchronous Redis client (its
    connections belong to one loop) and what is built on it."""

    redis: aioredis.Redis
    keys: AsyncKeyLookup
    enqueue: AsyncEnqueue


class _PerLoop:
    """The ``LoopServices`` of the running loop: uvicorn runs one per process for its whole
    life; a test client may start another."""

    def __init__(self, services: ApiServices) -> None:
        self._services = services
        self._loop: asyncio.AbstractEventLoop | None = None
        self._built: LoopServices | None = None

    def get(self) -> LoopServices:
        loop = asyncio.get_running_loop()
        if self._built is None or self._loop is not loop:
            self._built = self._services.build_loop_services()
            self._loop = loop
        return self._built


@dataclass(frozen=True)
class ApiServices:
    context: OutboxContext

    @cached_property
    def keys(self) -> ApiKeyStore:
        return ApiKeyStore(self.context.redis)

    @cached_property
    def sessions(self) -> SessionStore:
        return SessionStore(
            self.context.redis,
            idle_seconds=self.context.settings.session_idle_seconds,
            lifetime_seconds=self.context.settings.session_lifetime_seconds,
        )

    @cached_property
    def key_quota(self) -> KeyQuota:
        return KeyQuota(self.context.redis)

    @cached_property
    def celery(self) -> Celery:
        return create_celery_app(self.context)

    @cached_property
    def producer(self) -> Producer:
        return producer_for(self.context, self.celery)

    @cached_property
    def task_messages(self) -> TaskMessages:
        # Built in the serving process, on first use: it carries that process's node name.
        return TaskMessages(self.celery)

    @cached_property
    def reports(self) -> ReportService:
        return report_service(self.context, self.producer)

    @cached_property
    def _per_loop(self) -> _PerLoop:
        return _PerLoop(self)

    def on_loop(self) -> LoopServices:
        """The asynchronous services of the running event loop."""
        return self._per_loop.get()

    def build_loop_services(self) -> LoopServices:
        client = self.context.redis_location.async_producer_client()
        enqueuer = AsyncEnqueuer(client, retention_seconds=self.context.settings.retention_seconds)
        return LoopServices(
            client,
            AsyncKeyLookup(client),
            AsyncEnqueue(self.producer, enqueuer, self.task_messages),
        )


async def services(request: Request) -> ApiServices:
    """FastAPI dependency: the services of the app that serves ``request`` (a coroutine, so
    that FastAPI does not hand it to a thread)."""
    found: ApiServices = request.app.state.services
    return found
