"""``/healthz``, ``/readyz`` and ``/metrics``: for load balancers and Prometheus, no key."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Annotated, Any

import anyio.to_thread
import redis
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from kombu.exceptions import OperationalError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from pydantic import BaseModel, Field

from api.metrics import OutboxCollector, saved_delivery_mode
from api.services import ApiServices, services
from config.mail_settings import DeliveryMode
from tasks.celery_app import ping_workers

__all__ = ["router"]

router = APIRouter(tags=["health"])

Services = Annotated[ApiServices, Depends(services)]

# /readyz needs no key and its worker ping waits about a second: it is answered from the last
# check while that is this recent, so a flood of calls costs one ping, not a thread each.
READINESS_FRESH_SECONDS = 5.0


class Readiness:
    """The last answer of ``check``, reused while fresh; one check runs at a time, and the
    callers that arrive meanwhile await its answer (on the event loop, holding no thread)."""

    def __init__(self, check: Callable[[], dict[str, Any]]) -> None:
        self._check = check
        self._answer: dict[str, Any] = {}
        self._checked_at = -READINESS_FRESH_SECONDS
        self._running: asyncio.Task[dict[str, Any]] | None = None

    async def answer(self) -> dict[str, Any]:
        if time.monotonic() - self._checked_at < READINESS_FRESH_SECONDS:
            return self._answer
        if self._running is None:
            self._running = asyncio.ensure_future(self._refresh())
        # shield: a caller that hangs up must not cancel the check the others await.
        return await asyncio.shield(self._running)

    async def _refresh(self) -> dict[str, Any]:
        try:
            self._answer = await anyio.to_thread.run_sync(self._check)
            self._checked_at = time.monotonic()
            return self._answer
        finally:
            self._running = None


async def readiness(request: Request) -> Readiness:
    """FastAPI dependency: the app's Readiness, made on first use (async: no thread needed)."""
    state = request.app.state
    if not hasattr(state, "readiness"):
        found = await services(request)
        state.readiness = Readiness(lambda: _check_readiness(found))
    cached: Readiness = state.readiness
    return cached


class ReadinessBody(BaseModel):
    ready: bool
    redis: bool
    workers: int = Field(description="Workers that answered a ping.")
    redis_error: str | None = Field(default=None, description="Why Redis did not answer.")
    delivery_mode: str | None = Field(
        default=None,
        description="Only while the saved settings' delivery mode is not deliver: capture "
        "(nothing is sent) or redirect (everything goes to the redirect addresses).",
    )


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=ReadinessBody,
    responses={503: {"model": ReadinessBody, "description": "Redis or every worker is down."}},
)
async def readyz(cached: Annotated[Readiness, Depends(readiness)]) -> JSONResponse:
    """Redis answers and at least one worker answers a ping: e-mails would be sent (checked
    at most once every few seconds)."""
    checks = await cached.answer()
    ready = bool(checks["redis"] and checks["workers"])
    return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)


def _check_readiness(found: ApiServices) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    try:
        checks["redis"] = bool(found.context.redis.ping())
        # Ready or not, a staging outbox says so: nothing it takes reaches its recipients.
        mode = saved_delivery_mode(found.context.redis)
        if mode != DeliveryMode.DELIVER:
            checks["delivery_mode"] = mode
    except redis.RedisError as exc:
        checks["redis"] = False
        checks["redis_error"] = type(exc).__name__
    workers: list[str] = []
    if checks["redis"]:
        try:
            workers = ping_workers(found.celery)
        except (redis.RedisError, OperationalError) as exc:
            # The broker failed between the ping of Redis and this one: not ready, said in
            # the documented body rather than as an error.
            checks["redis"] = False
            checks["redis_error"] = type(exc).__name__
    checks["workers"] = len(workers)
    return checks


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}
    },
)
def metrics(found: Services) -> Response:
    """Prometheus text: deliveries by status, attempts by outcome, queue depth and age."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OutboxCollector(found.context.redis))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
