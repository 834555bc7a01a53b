"""``/healthz``, ``/readyz`` and ``/metrics``: for load balancers and Prometheus, no key."""

from __future__ import annotations

from typing import Annotated, Any

import redis
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from api.metrics import OutboxCollector
from api.services import ApiServices, services
from tasks.celery_app import ping_workers

__all__ = ["router"]

router = APIRouter(tags=["health"])

Services = Annotated[ApiServices, Depends(services)]


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(found: Services) -> JSONResponse:
    """Redis answers and at least one worker answers a ping: e-mails would be sent."""
    checks: dict[str, Any] = {}
    try:
        checks["redis"] = bool(found.context.redis.ping())
    except redis.RedisError as exc:
        checks["redis"] = False
        checks["redis_error"] = type(exc).__name__
    workers = ping_workers(found.celery) if checks["redis"] else []
    checks["workers"] = len(workers)
    ready = checks["redis"] and bool(workers)
    return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)


@router.get("/metrics")
def metrics(found: Services) -> Response:
    """Prometheus text: deliveries by status, attempts by outcome, queue depth and age."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OutboxCollector(found.context.redis))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
