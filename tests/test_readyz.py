"""``/readyz`` on a real uvicorn: a flood of calls costs one worker ping and starves no route."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from celery import Celery
from fastapi.testclient import TestClient
from kombu.exceptions import OperationalError

from api import health_routes
from api.app import create_app
from config.api_keys import ApiKeyStore, Role
from tasks.celery_app import ping_workers
from tasks.context import OutboxContext
from tests.support.served_api import served_api

CALLS = 40  # as many as the thread pool that runs the API's routes has threads


@pytest.fixture
def api_url(outbox_context: OutboxContext) -> Iterator[str]:
    """The API served by uvicorn in a thread, as `outbox api` serves it."""
    with served_api(outbox_context) as (host, port):
        yield f"http://{host}:{port}"


@pytest.fixture
def pings(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """When each Celery ping of /readyz started; the real ping still runs (no worker answers)."""
    started: list[float] = []
    real_ping = ping_workers  # the one the routes call (health_routes imports it)

    def counted(app: Celery, timeout: float = 1.0) -> list[str]:
        started.append(time.monotonic())
        return real_ping(app, timeout)

    monkeypatch.setattr(health_routes, "ping_workers", counted)
    return started


def test_concurrent_readiness_calls_share_one_ping_and_other_routes_answer(
    api_url: str, pings: list[float], outbox_context: OutboxContext
) -> None:
    key = ApiKeyStore(outbox_context.redis).create("scheduler", Role.PRODUCER)
    # One client for every call: a client each would build an SSL context each, whose CPU in
    # this process (which also serves the API) would be measured instead of the API.
    limits = httpx.Limits(max_connections=CALLS + 2)
    with (
        httpx.Client(base_url=api_url, timeout=30, limits=limits) as client,
        ThreadPoolExecutor(CALLS) as pool,
    ):
        calls = [pool.submit(client.get, "/readyz") for _ in range(CALLS)]
        time.sleep(0.3)  # they are all waiting for the ping now
        began = time.monotonic()
        listed = client.get("/api/emails", headers={"Authorization": f"Bearer {key}"})
        healthy = client.get("/healthz")
        took = time.monotonic() - began
        answers = [call.result() for call in calls]

    assert (listed.status_code, healthy.status_code) == (200, 200)
    assert took < 0.5, f"the other routes waited {took:.2f} s behind /readyz"
    assert {(answer.status_code, answer.text) for answer in answers} == {
        (503, '{"ready":false,"redis":true,"workers":0}')
    }
    assert len(pings) == 1
    assert httpx.get(f"{api_url}/readyz", timeout=30).status_code == 503
    assert len(pings) == 1  # still fresh: answered without a ping


def test_the_answer_is_checked_again_once_it_is_stale(
    api_url: str, pings: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health_routes, "READINESS_FRESH_SECONDS", 0.5)
    assert httpx.get(f"{api_url}/readyz", timeout=30).status_code == 503

    def one_worker(app: Celery, timeout: float = 1.0) -> list[str]:
        pings.append(time.monotonic())
        return ["celery@host"]

    monkeypatch.setattr(health_routes, "ping_workers", one_worker)
    assert httpx.get(f"{api_url}/readyz", timeout=30).status_code == 503  # the cached answer
    time.sleep(0.6)
    ready = httpx.get(f"{api_url}/readyz", timeout=30)
    assert (ready.status_code, ready.json()) == (200, {"ready": True, "redis": True, "workers": 1})
    assert len(pings) == 2


def test_a_broker_that_fails_the_ping_is_not_ready_in_the_documented_body(
    outbox_context: OutboxContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(app: Celery, timeout: float = 1.0) -> list[str]:
        raise OperationalError("Error 111 connecting to the broker")

    monkeypatch.setattr(health_routes, "ping_workers", broken)
    with TestClient(create_app(outbox_context)) as client:
        answer = client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json() == {
        "ready": False,
        "redis": False,
        "workers": 0,
        "redis_error": "OperationalError",
    }
