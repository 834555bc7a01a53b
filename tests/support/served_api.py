"""The API served by a real uvicorn in a thread, as ``outbox api`` serves it, for tests that
need the wire (raw sockets, concurrency) rather than FastAPI's in-process TestClient."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from api.app import create_app
from peers.redis_server import free_port
from tasks.context import OutboxContext

__all__ = ["served_api"]


@contextmanager
def served_api(context: OutboxContext) -> Iterator[tuple[str, int]]:
    """``(host, port)`` of the running API; stopped on exit."""
    port = free_port()
    config = uvicorn.Config(create_app(context), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped while starting"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(timeout=10)
